"""The page's helpers in the API: `/api/explain` (where each word looked), the example photos, and the titled docs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from captioner import __version__
from captioner.server.examples import example_photos
from helpers import tiny_decoder

EXAMPLES = Path(__file__).parents[1] / "examples"


def post(client, path: str, photo: Path, **options):
    return client.post(path, files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, data={k: str(v) for k, v in options.items()})


def test_explain_gives_each_word_its_map(client):
    photo = EXAMPLES / "coffee.jpg"
    body = post(client, "/api/explain", photo, beam_size=3).json()
    assert body["caption"] == post(client, "/api/captions", photo, beam_size=3).json()["captions"][0]["text"]
    assert body["grid"] == {"rows": 7, "columns": 7}
    assert [word["word"] for word in body["words"]] == body["caption"].rstrip(".").lower().split()  # the sentence's words, as the model wrote them
    for word in body["words"]:
        grid_map = np.array(word["map"])
        assert grid_map.shape == (7, 7) and (grid_map >= 0).all()
        assert grid_map.sum() == pytest.approx(1.0, abs=0.01)  # rounded to 4 decimals
        assert 0 < word["grid_share"] <= 1
    assert body["image"] == {"width": 600, "height": 400}
    assert client.get("/api/model").json()["attention_maps"] is True


def test_explain_refuses_a_model_without_attention_in_one_line(client, monkeypatch):
    monkeypatch.setattr(client.app.state.captioner, "decoder", tiny_decoder("merge"))
    response = post(client, "/api/explain", EXAMPLES / "chelsea.jpg")
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_attention_maps"
    assert "merge decoder" in response.json()["error"]["message"] and "\n" not in response.json()["error"]["message"]
    assert client.get("/api/model").json()["attention_maps"] is False


def test_explain_refuses_what_captions_refuses(client):
    response = client.post("/api/explain", files={"image": ("notes.txt", b"not a photo", "text/plain")})
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_image"


def test_example_photos_are_listed_and_served(client):
    listed = client.get("/api/examples").json()
    assert [photo["name"] for photo in listed] == sorted(path.name for path in EXAMPLES.glob("*.jpg"))
    for photo in listed:
        answer = client.get(photo["url"])
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert answer.content == (EXAMPLES / photo["name"]).read_bytes()


@pytest.mark.parametrize("name", ["nothing.jpg", "LICENSES.md", "..%2Fpyproject.toml", "%2Fetc%2Fpasswd"])
def test_only_example_photos_are_served(client, name):
    answer = client.get(f"/examples/{name}")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


def test_examples_come_from_the_package_when_installed(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(b"jpeg")
    (tmp_path / "notes.md").write_text("not a photo")
    assert example_photos(tmp_path) == {"cat.jpg": tmp_path / "cat.jpg"}


def test_docs_are_titled_with_the_version_and_link_back_to_the_page(client):
    info = client.get("/openapi.json").json()["info"]
    assert info["title"] == "Captioner" and info["version"] == __version__
    docs = client.get("/docs").text
    assert f"<title>Captioner {__version__} \u2014 JSON API</title>" in docs
    assert '<a class="link back-to-page" href="/">' in docs
