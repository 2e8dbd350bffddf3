"""The Python API in the field's conventions: from_pretrained(name_or_path) / save_pretrained, a
callable captioner, one image in -> one result out, iterables streamed, every input kind (URLs
from a local HTTP server), a readable repr, py.typed, sentence style, a widened beam."""
import io
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from captioner import Caption, Captioner, CaptionerError, ImageError, list_models
from captioner.api import pretrained_path
from captioner.generation.caption_style import sentence, written
from captioner.data.image_sources import fetch_url, read_image
from conftest import EXAMPLES, ROOT
from url_server import LARGE, PhotoServer

PHOTO = EXAMPLES / "chelsea.jpg"


@pytest.fixture(scope="module")
def photo_server():
    with PhotoServer() as server:
        yield server


def test_list_models_names_the_shipped_model():
    assert list_models() == ["flickr8k-default"]


def test_from_pretrained_takes_a_path_and_refuses_an_unknown_name_in_one_line(tmp_path):
    captioner = Captioner.from_pretrained(pretrained_path())  # a folder's path, not only a name
    assert captioner.name == "flickr8k-default"
    with pytest.raises(CaptionerError) as error:
        Captioner.from_pretrained("flickr8k-defualt")
    message = str(error.value)
    assert "flickr8k-default" in message and "reinstall" not in message and "\n" not in message
    with pytest.raises(CaptionerError, match="neither a shipped model"):
        Captioner.from_pretrained(tmp_path / "no-such-folder")


def test_save_pretrained_round_trip_gives_identical_captions(shipped_captioner, tmp_path, example_photos):
    folder = shipped_captioner.save_pretrained(tmp_path / "copy")
    assert sorted(path.name for path in folder.iterdir()) == sorted(path.name for path in pretrained_path().iterdir())
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary folder left behind
    loaded = Captioner.from_pretrained(folder)
    options = dict(beam_size=3, num_captions=2)
    assert loaded.caption(example_photos, **options) == shipped_captioner.caption(example_photos, **options)
    saved, shipped = (load_file(path / "model.safetensors") for path in (folder, pretrained_path()))
    assert {tensor.dtype for tensor in saved.values()} == {tensor.dtype for tensor in shipped.values()}  # float16 stays float16
    assert len(saved) == len(shipped) and not [name for name in saved if name.startswith("layers.")]  # saved under the block's names
    shipped_captioner.save_pretrained(folder)  # a model folder captioner wrote may be replaced
    assert Captioner.from_pretrained(folder).caption(PHOTO) == shipped_captioner.caption(PHOTO)


def test_save_pretrained_refuses_a_folder_of_other_files_and_leaves_it_alone(shipped_captioner, tmp_path):
    folder = tmp_path / "holiday"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(CaptionerError, match="files captioner did not write"):
        shipped_captioner.save_pretrained(folder)
    assert [path.name for path in folder.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CaptionerError, match="is a file"):
        shipped_captioner.save_pretrained(tmp_path / "file")
    with pytest.raises(CaptionerError, match="loaded from"):
        shipped_captioner.save_pretrained(pretrained_path())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "holiday"]


def test_one_image_gives_one_caption_and_the_captioner_is_callable(shipped_captioner):
    caption = shipped_captioner(PHOTO)
    assert isinstance(caption, Caption)
    assert caption == shipped_captioner.caption(str(PHOTO))
    best_three = shipped_captioner(PHOTO, num_captions=3)
    assert len(best_three) == 3 and all(isinstance(c, Caption) for c in best_three) and best_three[0].score >= best_three[-1].score


def test_every_input_kind_gives_the_same_caption(shipped_captioner, photo_server):
    data = PHOTO.read_bytes()
    image = Image.open(PHOTO)
    with open(PHOTO, "rb") as handle:
        inputs = [PHOTO, str(PHOTO), data, bytearray(data), io.BytesIO(data), handle, image, np.asarray(image.convert("RGB")), photo_server.url("/photo.jpg")]
        captions = shipped_captioner(inputs)
    assert [c.text for c in captions] == [captions[0].text] * len(inputs)


def test_a_list_gives_a_list_in_order_and_a_generator_is_streamed_lazily(shipped_captioner, example_photos):
    expected = shipped_captioner(example_photos)
    assert isinstance(expected, list) and len(expected) == len(example_photos)
    assert [c.text for c in expected] == [shipped_captioner(photo).text for photo in example_photos]
    taken = []

    def photos():
        for photo in example_photos:
            taken.append(photo)
            yield photo

    results = shipped_captioner(photos(), batch_size=2)
    assert not isinstance(results, list) and taken == []  # nothing read until asked for
    assert next(results) == expected[0] and len(taken) == 2  # one batch read
    assert [next(results)] + list(results) == expected[1:]


def test_bad_options_fail_before_any_image_is_read(shipped_captioner):
    def never():
        raise AssertionError("read")
        yield

    with pytest.raises(CaptionerError, match="style"):
        shipped_captioner.caption(never(), style="fancy")
    with pytest.raises(CaptionerError, match="at most|between 1 and 20"):
        shipped_captioner.caption(never(), num_captions=21)
    with pytest.raises(ImageError, match="cannot read an image from int"):
        shipped_captioner.caption(42)


def test_num_captions_above_beam_size_widens_the_beam(shipped_captioner):
    widened = shipped_captioner(PHOTO, beam_size=3, num_captions=5)
    assert len(widened) == 5
    assert widened == shipped_captioner(PHOTO, beam_size=5, num_captions=5)


def test_sentence_style_by_default_plain_on_request(shipped_captioner):
    styled, plain = shipped_captioner(PHOTO), shipped_captioner(PHOTO, style="plain")
    assert styled.text == sentence(plain.text) and styled.text[0].isupper() and styled.text.endswith(".")
    assert plain.text == plain.text.lower() and not plain.text.endswith(".")
    assert styled.score == plain.score
    assert sentence("a cat sitting on a bed") == "A cat sitting on a bed." and sentence("") == ""
    assert written("a man riding a horse", "sentence", neutral=True) == "A person riding a horse."


def test_generate_stays_plain_for_metrics(shipped_captioner):
    (best, *_), = shipped_captioner.generate(shipped_captioner.encode([PHOTO]))
    assert best.text == shipped_captioner(PHOTO, style="plain").text


def test_repr_names_model_backend_and_device(shipped_captioner):
    assert repr(shipped_captioner) == "Captioner(model='flickr8k-default', backend='pytorch', device='cpu')"


def test_py_typed_is_shipped():
    assert (ROOT / "captioner" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["captioner"]
    assert "py.typed" in package_data


# ---- URLs, against a local HTTP server ---------------------------------------------------------

def test_url_photo_is_downloaded_and_redirects_followed(photo_server):
    assert fetch_url(photo_server.url("/photo.jpg")) == PHOTO.read_bytes()
    assert read_image(photo_server.url("/redirect.jpg")).size == read_image(PHOTO).size


@pytest.mark.parametrize("path, options, message", [
    ("/missing.jpg", {}, "answered 404"),
    ("/page.html", {}, "not an image (the server sent text/html)"),
    ("/loop", {"max_redirects": 3}, "more than 3 redirects"),
    ("/large-declared.jpg", {"max_bytes": LARGE // 2}, "download limit"),
    ("/large-streamed.jpg", {"max_bytes": LARGE // 2}, "download limit"),
    ("/slow.jpg", {"timeout": 0.3}, "no answer within 0.3 s"),
])
def test_url_failures_are_one_line_naming_the_url(photo_server, path, options, message):
    url = photo_server.url(path)
    with pytest.raises(ImageError) as error:
        fetch_url(url, **options)
    assert message in str(error.value) and str(error.value).startswith(url) and "\n" not in str(error.value)


def test_url_that_is_not_an_image_fails_in_the_api_in_one_line(shipped_captioner, photo_server):
    with pytest.raises(ImageError, match="text.jpg: not a supported image"):
        shipped_captioner(photo_server.url("/text.jpg"))
    with pytest.raises(ImageError, match="answered 404"):
        shipped_captioner(photo_server.url("/missing.jpg"))


def test_text_mode_file_object_is_refused_in_one_line(shipped_captioner, tmp_path):
    with open(PHOTO, encoding="latin-1") as handle, pytest.raises(ImageError, match="text mode"):
        shipped_captioner(handle)


def test_public_names_are_exported():
    import captioner

    assert {"Captioner", "Caption", "list_models"} <= set(captioner.__all__)
    assert json.loads((pretrained_path() / "config.json").read_text())["name"] in list_models()
