"""The JSON API with the shipped model, through FastAPI's TestClient and, where sockets matter
(stalled, dropped and concurrent clients), a real uvicorn server: captions, errors, limits, queue, privacy."""
from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import io
import itertools
import json
import logging
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import starlette.formparsers
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from captioner.api import pretrained_path
from captioner.errors import CaptionerError
from captioner.server import Settings, create_app
from captioner.server import photo_decoding
from captioner.server.app import MULTIPART_OVERHEAD, ApiError, DecodeMemory, InferenceQueue, PhotoDecoder, caption_batcher, openapi_3_0
from captioner.server.batching import CaptionBatcher
from captioner.server.connections import uvicorn_config
from captioner.server.security_headers import PAGE_POLICY

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return (EXAMPLES / "astronaut.jpg").read_bytes()


def post_image(client, data: bytes, name: str = "photo.jpg", **options):
    return client.post("/api/captions", files={"image": (name, data, "application/octet-stream")}, data={k: str(v) for k, v in options.items()})


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"].strip()
    return body["error"]


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of width x height pixels that compresses to a few tens of kilobytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then 8 pixels a byte
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def many_scan_jpeg(side: int, scans: int) -> bytes:
    """A grey progressive JPEG whose last scan is repeated: each copy is ~100 bytes and another pass over the image."""
    data = encoded(Image.new("L", (side, side), 128), "JPEG", progressive=True)
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - data.count(b"\xff\xda")) + data[end:]


def with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with another size in its frame header: what a header claims, without the pixels' encoding time."""
    frame = next(jpeg.index(marker) for marker in (b"\xff\xc0", b"\xff\xc2") if marker in jpeg)
    return jpeg[: frame + 5] + struct.pack(">HH", height, width) + jpeg[frame + 9 :]


def app_sharing_model(client, inference_threads: int = 1, **settings):
    """A fresh app with its own settings and queue but the module's loaded model (no second lifespan)."""
    app = create_app(Settings(inference_threads=inference_threads, **settings))
    app.state.captioner = client.app.state.captioner
    app.state.inference_queue = InferenceQueue(app.state.settings.queue_size, inference_threads)
    app.state.photo_decoder = PhotoDecoder(app.state.settings)
    app.state.batcher = caption_batcher(app.state.captioner, app.state.inference_queue, app.state.settings)
    return app


@pytest.fixture
def server_logs(caplog, monkeypatch):
    """Every log record of the app and of uvicorn, even if an earlier test let uvicorn configure its loggers."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.INFO)
    return caplog


def assert_no_tracebacks(caplog) -> None:
    assert not [record for record in caplog.records if record.exc_info], caplog.text
    assert "Traceback" not in caplog.text


@contextmanager
def uvicorn_serving(app) -> Iterator[int]:
    """Serve app (its model already in place) with uvicorn on a free loopback port in a thread; yield the port."""
    settings = app.state.settings
    config = uvicorn_config(app, "127.0.0.1", 0, settings.header_timeout, settings.max_connections, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)  # as serve() configures it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.inference_queue.shutdown()
        app.state.photo_decoder.shutdown()


def start_raw_upload(port: int, body: bytes, content_length: int) -> socket.socket:
    """Open a connection and send a POST's headers and `body`, which may be less than content_length promises."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /api/captions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (an answer may come in several packets)."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def seconds_until_closed(connection: socket.socket, drip: bytes = b"", limit: float = 6.0) -> float:
    """Send `drip` one byte every 0.1 s (or nothing) until the server closes the connection; how long that took (inf: past `limit`)."""
    started = time.monotonic()
    connection.settimeout(0.1)
    for byte in itertools.cycle(drip) if drip else itertools.repeat(None):
        if time.monotonic() - started > limit:
            return float("inf")
        try:
            if byte is not None:
                connection.send(bytes([byte]))
            if connection.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    raise AssertionError("unreachable")


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---- answers ------------------------------------------------------------------------------

def test_example_photo_gets_a_caption(client, astronaut):
    response = post_image(client, astronaut)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["captions"]) == 1 and body["captions"][0]["text"].strip()
    assert body["model"] == client.app.state.captioner.name
    assert body["image"] == {"width": 512, "height": 512}
    assert set(body["timing_ms"]) == {"decode", "encode", "generate", "total"}
    assert all(value >= 0 for value in body["timing_ms"].values())
    assert body["timing_ms"]["total"] >= body["timing_ms"]["encode"] + body["timing_ms"]["generate"]


def test_answer_has_the_photos_tags(client):
    data = (EXAMPLES / "chelsea.jpg").read_bytes()
    body = post_image(client, data, beam_size=3, num_captions=2).json()
    tags = body["tags"]
    assert isinstance(tags, list) and tags
    assert all(set(tag) == {"word", "score"} and tag["word"].strip() and 0.0 <= tag["score"] <= 1.0 for tag in tags)
    scores = [tag["score"] for tag in tags]
    assert scores == sorted(scores, reverse=True)
    expected = client.app.state.captioner.caption(data, beam_size=3, num_captions=2)
    assert tags == [{"word": t.word, "score": t.score} for t in expected[0].tags]  # the captions' own tags
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "tags" in schema["CaptionResponse"]["properties"] and set(schema["Tag"]["properties"]) == {"word", "score"}


def test_n_best_list_is_sorted_and_matches_the_python_api(client):
    data = (EXAMPLES / "chelsea.jpg").read_bytes()
    body = post_image(client, data, beam_size=4, num_captions=3).json()
    scores = [caption["score"] for caption in body["captions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    expected = client.app.state.captioner.caption(data, beam_size=4, num_captions=3)
    assert [c["text"] for c in body["captions"]] == [c.text for c in expected]


def test_huge_photo_is_downscaled_and_reports_its_real_size(client):
    gradient = np.linspace(0, 255, 5000, dtype=np.uint8)[None, :, None].repeat(3000, axis=0).repeat(3, axis=2)  # (H, W, 3)
    response = post_image(client, encoded(Image.fromarray(gradient), "PNG"), "big.png")
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 5000, "height": 3000}


def test_exif_rotation_swaps_the_reported_size(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(Image.new("RGB", (300, 200), (90, 140, 200)), "JPEG", exif=exif)
    assert post_image(client, data).json()["image"] == {"width": 200, "height": 300}


def test_model_info(client):
    body = client.get("/api/model").json()
    captioner = client.app.state.captioner
    assert body["name"] == captioner.name
    assert body["encoder"] == captioner.config.encoder
    assert body["decoder"]["kind"] == captioner.decoder.config.kind
    assert body["vocabulary_size"] == len(captioner.vocabulary)
    assert body["metrics"] == captioner.metrics
    assert (body["device"], body["backend"]) == ("cpu", "pytorch")


def test_health_and_limits(client):
    assert client.get("/healthz").json() == {"status": "ok", "model_loaded": True, "model": client.app.state.captioner.name}
    limits = client.get("/api/limits").json()
    assert limits["max_upload_bytes"] == 10 * 1024 * 1024
    assert limits["beam_size"] == {"minimum": 1, "maximum": 10, "default": 3}


def test_page_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # Swagger UI served offline
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in docs.text and client.get(asset).status_code == 200
    operation = client.get("/openapi.json").json()["paths"]["/api/captions"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"]["format"] == "binary" and form["required"] == ["image"]
    assert {"200", "413", "415", "422", "503"} <= set(operation["responses"])


def test_every_answer_carries_the_security_headers(client):
    """Pages, static files, docs, JSON answers and every kind of error, from a real server: the
    page's policy on every HTML file, /docs its own policy allowing only its inline script, nosniff everywhere."""
    app = app_sharing_model(client)

    @app.get("/fails")
    async def fails():
        raise RuntimeError("a bug")

    text_upload = {"files": {"image": ("a.txt", b"hello", "text/plain")}}
    requests = [
        ("GET", "/", {}), ("GET", "/static/index.html", {}), ("GET", "/static/app.js", {}), ("GET", "/static/style.css", {}),
        ("GET", "/static/nope.js", {}), ("GET", "/docs", {}), ("GET", "/docs/openapi-3.0.json", {}), ("GET", "/docs-assets/swagger-ui.css", {}),
        ("GET", "/openapi.json", {}), ("GET", "/healthz", {}), ("HEAD", "/healthz", {}), ("GET", "/api/limits", {}), ("GET", "/api/model", {}),
        ("GET", "/nowhere", {}), ("GET", "/api/captions", {}), ("POST", "/api/captions", text_upload), ("POST", "/api/captions", {"content": b"x"}),
        ("GET", "/fails", {}),
    ]
    with uvicorn_serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        answers = {(method, path, response.status_code): response for method, path, options in requests for response in [http.request(method, path, **options)]}
    assert {status for _, _, status in answers} >= {200, 404, 405, 415, 500}
    for (method, path, status), response in answers.items():
        headers = response.headers
        assert headers.get("x-content-type-options") == "nosniff", (method, path, status)
        assert headers.get("x-frame-options") == "DENY", (method, path, status)
        assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), (method, path, status)
        if path != "/docs":
            assert headers["content-security-policy"] == PAGE_POLICY, (method, path, status)
    for path in ("/", "/static/index.html"):
        assert "text/html" in answers["GET", path, 200].headers["content-type"]
    docs = answers["GET", "/docs", 200]
    inline = re.search(r"<script>(.*?)</script>", docs.text, re.DOTALL).group(1).encode()
    digest = base64.b64encode(hashlib.sha256(inline).digest()).decode()
    script_src = re.search(r"script-src ([^;]*)", docs.headers["content-security-policy"]).group(1).split()
    assert script_src == ["'self'", f"'sha256-{digest}'"]  # its one inline script, and no 'unsafe-inline'
    assert "validatorUrl" in docs.text and "null" in docs.text


# ---- errors -------------------------------------------------------------------------------

def test_upload_over_the_limit_is_413(client):
    too_big = b"\xff\xd8" + b"\0" * (10 * 1024 * 1024)
    assert_error(post_image(client, too_big), 413, "upload_too_large")


def test_upload_without_content_length_is_413(client):
    boundary = "limit-test"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'.encode()
    chunks = (head if index == 0 else b"\0" * 65536 for index in range(200))  # ~13 MB, chunked
    response = client.post("/api/captions", content=chunks, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "upload_too_large")


def raw_post(app, receive) -> list[dict]:
    """POST /api/captions straight through ASGI, so a test controls how the body arrives."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/captions", "raw_path": b"/api/captions", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent


IMAGE_PART_HEAD = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'


def test_size_limit_is_enforced_while_reading(client):
    """The server stops pulling the body soon after the limit, instead of reading all 65 MB offered."""
    limit = client.app.state.settings.max_upload_bytes
    chunk, pulled = b"\0" * 65536, 0

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": IMAGE_PART_HEAD if pulled == 1 else chunk, "more_body": pulled < 1000}

    assert raw_post(client.app, receive)[0]["status"] == 413
    assert (pulled - 2) * len(chunk) <= limit + MULTIPART_OVERHEAD


def test_slow_upload_is_408(client):
    """A client trickling its upload cannot hold a queue slot for long."""
    app = create_app(Settings(upload_timeout=0.2))
    app.state.captioner = client.app.state.captioner  # share the loaded model instead of a second lifespan
    app.state.inference_queue = InferenceQueue(capacity=1, threads=1)
    app.state.photo_decoder = PhotoDecoder(app.state.settings)
    pulled = 0

    async def receive():
        nonlocal pulled
        pulled += 1
        if pulled > 1:
            await asyncio.sleep(0.1)
        return {"type": "http.request", "body": IMAGE_PART_HEAD if pulled == 1 else b"\0" * 100, "more_body": pulled < 100}

    started = time.monotonic()
    sent = raw_post(app, receive)
    assert sent[0]["status"] == 408 and b"upload_timeout" in sent[1]["body"], sent
    assert time.monotonic() - started < 2
    assert app.state.inference_queue.admitted == 0  # the slot was given back
    app.state.inference_queue.shutdown()
    app.state.photo_decoder.shutdown()


def test_docs_read_an_openapi_3_0_schema(client):
    """The bundled Swagger UI 4 cannot render OpenAPI 3.1 ("Unable to render this definition")."""
    docs = client.get("/docs").text
    assert "/docs/openapi-3.0.json" in docs and "/openapi.json" not in docs
    schema, original = client.get("/docs/openapi-3.0.json").json(), client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.0.") and original["openapi"].startswith("3.1.")
    assert set(schema["paths"]) == set(original["paths"]) and set(schema["components"]["schemas"]) == set(original["components"]["schemas"])
    assert '{"type": "null"}' not in json.dumps(schema)
    model = schema["components"]["schemas"]["Health"]["properties"]["model"]
    assert model["type"] == "string" and model["nullable"] is True


def test_openapi_3_0_rewrites_what_3_1_changed():
    document = {"openapi": "3.1.0", "components": {"schemas": {"A": {"properties": {
        "maybe_ref": {"anyOf": [{"$ref": "#/components/schemas/B"}, {"type": "null"}]},
        "either": {"oneOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
        "fixed": {"const": "x", "examples": ["x"]},
        "const": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5},
    }}}}}
    properties = openapi_3_0(document)["components"]["schemas"]["A"]["properties"]
    assert properties["maybe_ref"] == {"nullable": True, "allOf": [{"$ref": "#/components/schemas/B"}]}
    assert properties["either"] == {"nullable": True, "oneOf": [{"type": "integer"}, {"type": "string"}]}
    assert properties["fixed"] == {"enum": ["x"], "example": "x"}
    assert properties["const"] == {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "maximum": 1.5, "exclusiveMaximum": True}
    assert openapi_3_0(document)["openapi"] == "3.0.3" and document["openapi"] == "3.1.0"  # a copy


def test_text_file_is_415(client):
    assert_error(post_image(client, b"Dear diary, today I uploaded a text file.\n", "notes.txt"), 415, "unsupported_image")


def test_non_multipart_request_is_415(client, astronaut):
    response = client.post("/api/captions", content=astronaut, headers={"content-type": "image/jpeg"})
    assert_error(response, 415, "unsupported_media_type")


def test_truncated_jpeg_is_422(client, astronaut):
    error = assert_error(post_image(client, astronaut[: len(astronaut) // 2]), 422, "invalid_image")
    assert "truncated" in error["message"]


def test_empty_file_is_422(client):
    assert_error(post_image(client, b""), 422, "invalid_image")


def test_decompression_bomb_is_refused(client):
    bomb = png_bomb()
    assert len(bomb) < 200_000
    error = assert_error(post_image(client, bomb, "bomb.png"), 422, "image_too_large")
    assert error["message"] == "20,000 x 20,000 pixels is over the 64-megapixel limit; downscale the photo and try again."


def test_big_png_has_the_lower_limit_of_formats_decoded_at_full_size(client):
    error = assert_error(post_image(client, png_bomb(5_000, 5_000), "big.png"), 422, "image_too_large")
    assert error["message"] == "5,000 x 5,000 pixels is over the 20-megapixel limit for PNG (only JPEG decodes at reduced size); save it as JPEG or downscale the photo and try again."
    assert client.get("/api/limits").json()["max_pixels_not_jpeg"] == 20_000_000
    assert post_image(client, png_bomb(4_000, 4_000), "fine.png").status_code == 200  # 16 MP
    webp = encoded(Image.new("RGB", (2_100, 2_100), (90, 120, 150)), "WEBP")  # WebP's decoder costs more: a fifth of the limit
    error = assert_error(post_image(client, webp, "big.webp"), 422, "image_too_large")
    assert error["message"].startswith("2,100 x 2,100 pixels is over the 4-megapixel limit for WEBP")


def test_an_empty_option_field_is_its_default(client, astronaut):
    """Swagger UI's "Try it out" and HTML forms send the fields left empty; they take the defaults."""
    response = client.post("/api/captions", files={"image": ("a.jpg", astronaut, "image/jpeg"), "beam_size": (None, ""), "style": (None, "")})
    assert response.status_code == 200, response.text
    assert response.json()["captions"][0]["text"] == client.app.state.captioner.caption(astronaut).text


@pytest.mark.parametrize("options", [
    {"beam_size": 0}, {"beam_size": 11}, {"beam_size": "three"}, {"num_captions": 6},
    {"beam_size": 2, "num_captions": 3}, {"beam_size": "9" * 100}, {"beam": 3},
])
def test_bad_options_are_422(client, astronaut, options):
    assert_error(post_image(client, astronaut, **options), 422, "invalid_options")


def test_captions_are_sentences_unless_plain_is_asked_and_neutral_on_request(client, astronaut):
    from captioner.generation.caption_style import sentence

    styled, plain, neutral = (post_image(client, astronaut, **options).json()["captions"][0]["text"] for options in ({}, {"style": "plain"}, {"style": "plain", "neutral": "true"}))
    assert styled == sentence(plain) and styled[0].isupper() and styled.endswith(".")  # the page shows it as sent
    assert plain == client.app.state.captioner.caption(astronaut, style="plain").text
    assert " man " in f" {plain} " and neutral == plain.replace("a man ", "a person ")
    assert_error(post_image(client, astronaut, style="fancy"), 422, "invalid_options")


def test_the_server_never_fetches_a_url_a_client_sends(client):
    from url_server import PhotoServer

    with PhotoServer() as photos:
        url = photos.url("/photo.jpg")
        assert_error(post_image(client, url.encode()), 415, "unsupported_image")  # the address as the photo's bytes
        assert_error(post_image(client, b"", url=url), 422, "invalid_options")  # or as a field of its own
        assert photos.requests == []


def test_missing_image_is_422(client):
    response = client.post("/api/captions", files={"beam_size": (None, "3")})
    assert_error(response, 422, "missing_image")


@pytest.mark.parametrize("body, content_type", [
    (b"no boundary here", "multipart/form-data"),
    (b"garbage", "multipart/form-data; boundary=xyz"),
    (b'--xyz\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc', "multipart/form-data; boundary=xyz"),
])
def test_malformed_multipart_is_400_not_500(client, body, content_type):
    response = client.post("/api/captions", content=body, headers={"content-type": content_type})
    assert_error(response, 400, "malformed_request")


def test_overlong_boundary_is_400_not_500(client, astronaut, server_logs):
    """python-multipart refuses boundaries over 256 characters when the parser is built, before any body is parsed."""
    boundary = "b" * 257
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'.encode() + astronaut + f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/api/captions", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "boundary" in assert_error(response, 400, "malformed_request")["message"].lower()
    assert_no_tracebacks(server_logs)


@pytest.mark.parametrize("path", ["/", "/healthz", "/api/model", "/api/limits", "/docs", "/static/app.js"])
def test_head_answers_like_get(client, path):
    get, head = client.get(path), client.head(path)
    assert get.status_code == head.status_code == 200
    assert head.content == b"" and dict(head.headers) == dict(get.headers)
    assert int(head.headers["content-length"]) == len(get.content)


def test_unknown_routes_and_methods_answer_json(client):
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/api/captions"), 405, "method_not_allowed")


# ---- load and safety ----------------------------------------------------------------------

def test_full_queue_is_a_quick_503(client, astronaut):
    queue = client.app.state.inference_queue
    held = 0
    try:
        while queue.try_admit():  # hold every slot, as a burst of slow requests would
            held += 1
        assert held == client.app.state.settings.queue_size
        response = post_image(client, astronaut)
        assert_error(response, 503, "queue_full")
        assert response.headers["retry-after"] == "1"
    finally:
        for _ in range(held):
            queue.leave()
    assert post_image(client, astronaut).status_code == 200


def test_refusal_reads_the_small_upload_first(client):
    """Answering before the upload is read could reset the connection and lose the 503."""
    queue = client.app.state.inference_queue
    pulled = 0

    async def receive():
        nonlocal pulled
        pulled += 1
        body = IMAGE_PART_HEAD if pulled == 1 else b"\0" * 1000 if pulled < 5 else b"\r\n--b--\r\n"
        return {"type": "http.request", "body": body, "more_body": pulled < 5}

    held = 0
    try:
        while queue.try_admit():
            held += 1
        sent = raw_post(client.app, receive)
    finally:
        for _ in range(held):
            queue.leave()
    assert sent[0]["status"] == 503 and pulled == 5


def test_concurrent_requests_are_safe(client, monkeypatch):
    """Four jobs run at the same moment on four inference threads, and each answer is its own photo's."""
    photos = {name: (EXAMPLES / name).read_bytes() for name in ("rocket.jpg", "coffee.jpg", "astronaut.jpg", "chelsea.jpg")}
    expected = {name: post_image(client, data, beam_size=3, num_captions=2).json() for name, data in photos.items()}
    together = threading.Barrier(len(photos), timeout=60)  # opens only once every job is running at once
    real_caption_batch = CaptionBatcher._caption_batch

    def caption_batch_together(*args):
        together.wait()
        return real_caption_batch(*args)

    monkeypatch.setattr(CaptionBatcher, "_caption_batch", caption_batch_together)
    app = app_sharing_model(client, inference_threads=len(photos), max_batch=1)  # one photo a job: four jobs at once
    with uvicorn_serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http, ThreadPoolExecutor(len(photos)) as pool:
        responses = dict(zip(photos, pool.map(lambda name: post_image(http, photos[name], beam_size=3, num_captions=2), photos)))
    for name, response in responses.items():
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["captions"], body["tags"], body["image"]) == (expected[name]["captions"], expected[name]["tags"], expected[name]["image"])


# ---- slow, stalled and vanishing clients (a real server, real sockets) ---------------------

def test_stalled_uploads_hold_no_inference_slot(client, astronaut):
    """Six clients send 100 bytes and stall (three times the queue); a normal client still gets its caption at once."""
    app = app_sharing_model(client, queue_size=2, read_timeout=60)
    memory, queue = app.state.upload_memory, app.state.inference_queue
    upload = IMAGE_PART_HEAD + astronaut + b"\r\n--b--\r\n"
    with uvicorn_serving(app) as port:
        stalled = [start_raw_upload(port, upload[:100], len(upload)) for _ in range(6)]
        try:
            assert wait_until(lambda: memory.held == 6 * 100), "the server did not start reading the stalled uploads"
            assert queue.admitted == 0
            started = time.monotonic()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                response = post_image(http, astronaut)
            assert response.status_code == 200, response.text
            assert time.monotonic() - started < 15  # a caption's time, not a timeout's
        finally:
            for connection in stalled:
                connection.close()


def test_stalled_upload_is_dropped_after_the_read_timeout(client):
    app = app_sharing_model(client, read_timeout=0.5)
    with uvicorn_serving(app) as port:
        connection = start_raw_upload(port, IMAGE_PART_HEAD + b"\0" * 100, content_length=100_000)
        started = time.monotonic()
        with connection:
            answer = read_until_closed(connection)
        assert answer.startswith(b"HTTP/1.1 408") and b"upload_timeout" in answer and b"stalled" in answer
        assert time.monotonic() - started < 5
        assert wait_until(lambda: app.state.upload_memory.held == 0)


def test_silent_and_dripping_connections_are_closed_after_the_header_timeout(client):
    """uvicorn alone keeps both open for ever; a normal request meanwhile gets its answer."""
    app = app_sharing_model(client, header_timeout=1.0)
    with uvicorn_serving(app) as port, ThreadPoolExecutor(3) as pool:
        silent = socket.create_connection(("127.0.0.1", port))
        dripping = socket.create_connection(("127.0.0.1", port))
        answered = socket.create_connection(("127.0.0.1", port))  # answered, then drips the next request's headers
        answered.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answered.recv(65536).startswith(b"HTTP/1.1 200")
        waits = [pool.submit(seconds_until_closed, connection, drip) for connection, drip in (
            (silent, b""), (dripping, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"), (answered, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        )]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.get("/healthz").status_code == 200
        closed_after = [wait.result() for wait in waits]
        for connection in (silent, dripping, answered):
            connection.close()
    assert all(0.8 < seconds < 4 for seconds in closed_after), closed_after


def test_past_the_connection_cap_the_longest_idle_connection_makes_room(client):
    app = app_sharing_model(client, max_connections=2, header_timeout=60, read_timeout=60)
    with uvicorn_serving(app) as port:
        oldest, newer = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.get("/healthz").status_code == 200  # a third connection: the oldest idle one is closed for it
        assert seconds_until_closed(oldest, limit=3) < 3
        assert seconds_until_closed(newer, limit=0.3) == float("inf")  # still open
        newer.close()
    app = app_sharing_model(client, max_connections=2, header_timeout=60, read_timeout=60)
    with uvicorn_serving(app) as port:
        uploading = [start_raw_upload(port, IMAGE_PART_HEAD, content_length=100_000) for _ in range(2)]  # busy with requests, not idle
        assert wait_until(lambda: app.state.upload_memory.held == 2 * len(IMAGE_PART_HEAD)), "the server did not start reading the uploads"
        with socket.create_connection(("127.0.0.1", port)) as one_too_many:
            assert seconds_until_closed(one_too_many, limit=3) < 3  # refused: no idle connection to close for it
        assert all(seconds_until_closed(connection, limit=0.3) == float("inf") for connection in uploading)
        for connection in uploading:
            connection.close()


def test_client_leaving_mid_upload_is_one_quiet_log_line(client, server_logs):
    app = app_sharing_model(client)
    with uvicorn_serving(app) as port:
        connection = start_raw_upload(port, IMAGE_PART_HEAD + b"\0" * 1000, content_length=100_000)
        assert wait_until(lambda: app.state.upload_memory.held > 0), "the server did not start reading the upload"
        connection.close()
        assert wait_until(lambda: app.state.upload_memory.held == 0), "the server still holds the abandoned upload"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200  # and it still answers
    lines = [record for record in server_logs.records if "disconnect" in record.getMessage().lower()]
    assert len(lines) == 1 and lines[0].levelno <= logging.INFO, server_logs.text
    assert not [record for record in server_logs.records if record.levelno >= logging.WARNING], server_logs.text
    assert_no_tracebacks(server_logs)


def test_upload_memory_is_bounded_and_given_back(client, astronaut):
    app = app_sharing_model(client, max_upload_bytes=1024 * 1024, upload_memory=1024 * 1024 + MULTIPART_OVERHEAD)
    memory, test_client = app.state.upload_memory, TestClient(app)  # no `with`: no second lifespan
    with memory.account() as hold:
        hold(memory.capacity - 1000)  # as if other uploads filled the budget
        assert_error(post_image(test_client, astronaut), 503, "queue_full")
    assert memory.held == 0
    assert post_image(test_client, astronaut).status_code == 200
    assert memory.held == 0
    app.state.inference_queue.shutdown()
    app.state.photo_decoder.shutdown()
    with pytest.raises(ValidationError, match="upload_memory"):
        Settings(max_upload_bytes=1024 * 1024, upload_memory=1024 * 1024)


# ---- decoding: its own threads, a work budget and a memory budget ---------------------------

def test_many_scan_jpeg_is_a_quick_422_and_other_photos_are_captioned_meanwhile(client, astronaut):
    """Issue 17: a 16-megapixel JPEG with 400 scans took ~8 s to decode, on the inference thread."""
    slow = many_scan_jpeg(4000, 400)
    assert len(slow) < 200_000
    app = app_sharing_model(client)
    with uvicorn_serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http, ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        refused = pool.submit(post_image, http, slow, "scans.jpg")
        normal = pool.submit(post_image, http, astronaut)
        error = assert_error(refused.result(), 422, "image_too_costly")
        assert time.monotonic() - started < 5
        assert normal.result().status_code == 200
        assert time.monotonic() - started < 10  # a caption's time, not a slow decode's
    assert error["message"].startswith("JPEG with 400 scans is over the limit of 100") and "baseline" in error["message"]


def test_decoding_runs_on_its_own_threads_beside_inference(client, astronaut, monkeypatch):
    """A photo whose decoding is held up does not delay another photo's caption."""
    real_decode_photo = photo_decoding.decode_photo
    held_photo = encoded(Image.new("RGB", (64, 48), (10, 200, 30)), "PNG")
    release, threads = threading.Event(), []

    def decode_photo(data, preprocess_config):
        threads.append(threading.current_thread().name)
        if data == held_photo:
            assert release.wait(60)
        return real_decode_photo(data, preprocess_config)

    monkeypatch.setattr(photo_decoding, "decode_photo", decode_photo)  # where PhotoDecoder looks it up
    app = app_sharing_model(client)
    with uvicorn_serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http, ThreadPoolExecutor(1) as pool:
        held = pool.submit(post_image, http, held_photo, "held.png")
        try:
            assert wait_until(lambda: len(threads) == 1), "the held photo was not decoded"
            assert post_image(http, astronaut).status_code == 200  # while the other photo is still being decoded
            assert not held.done()
        finally:
            release.set()
        assert held.result().status_code == 200
    assert len(threads) == 2 and all(name.startswith("captioner-decode") for name in threads), threads


def test_decode_memory_is_never_exceeded_and_always_given_back():
    async def scenario():
        memory, rng, inside, most = DecodeMemory(capacity=100, wait=30), random.Random(0), 0, 0

        async def decode(size: int) -> None:
            nonlocal inside, most
            async with memory.hold(size, "a photo"):
                inside += size
                most = max(most, inside)
                await asyncio.sleep(0)  # let the others try to get in meanwhile
                inside -= size

        await asyncio.gather(*(decode(rng.randint(1, 100)) for _ in range(300)))
        assert memory.held == 0 and most <= 100 and memory.most_held == most > 50
        with pytest.raises(ApiError) as alone_too_big:
            async with memory.hold(101, "this photo"):
                pass
        assert alone_too_big.value.status == 422 and alone_too_big.value.code == "image_too_costly"
        short = DecodeMemory(capacity=100, wait=0.05)
        async with short.hold(60, "one photo"):
            with pytest.raises(ApiError) as busy:
                async with short.hold(60, "another"):
                    pass
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "2"}
        async with short.hold(100, "a third"):  # everything was given back, the refused wait included
            assert short.held == 100

    asyncio.run(scenario())


def test_photos_that_need_more_than_the_decode_memory_are_a_422(client):
    """Issue 17: an 8000 x 8000 progressive 4:4:4 JPEG of 751 KB took the server to 845 MiB."""
    progressive = with_frame_size(encoded(Image.new("RGB", (1000, 1000), (90, 140, 200)), "JPEG", progressive=True, subsampling=0, quality=50), 8000, 8000)
    error = assert_error(post_image(client, progressive), 422, "image_too_costly")
    assert error["message"].startswith("Decoding this 8,000 x 8,000 progressive JPEG needs about 38") and "72 MiB" in error["message"]
    app = app_sharing_model(client, decode_memory=8 * 1024 * 1024)
    test_client = TestClient(app)  # no `with`: no second lifespan
    error = assert_error(post_image(test_client, encoded(Image.new("RGB", (2000, 1500), (1, 2, 3)), "PNG")), 422, "image_too_costly")
    assert "2,000 x 1,500 PNG needs about 15 MiB, more than the 8 MiB" in error["message"]
    assert post_image(test_client, encoded(Image.new("RGB", (1000, 750), (1, 2, 3)), "PNG")).status_code == 200
    assert app.state.photo_decoder.memory.held == 0
    app.state.inference_queue.shutdown()
    app.state.photo_decoder.shutdown()


def test_uploads_never_touch_disk_nor_logs(client, monkeypatch, caplog):
    """A > 1 MB upload (where multipart parsers usually spool to a temporary file) stays in memory."""
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "PNG")
    assert len(data) > 1024 * 1024
    writes = []
    real_open = builtins.open

    def watching_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("an upload must never be written to a temporary file")

    monkeypatch.setattr(builtins, "open", watching_open)
    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)  # what request.form() would use
    caplog.set_level(logging.DEBUG)
    response = post_image(client, data, "secret-holiday.png")
    assert response.status_code == 200, response.text
    assert writes == []
    assert "secret-holiday" not in caplog.text


# ---- start-up -----------------------------------------------------------------------------

def test_broken_model_fails_at_startup(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(CaptionerError, match="cannot load the model"):
            with TestClient(create_app(Settings(model_path=folder))):
                pass


@pytest.mark.parametrize("metrics", ['{"CIDEr": 0.5, "BLEU-4"', "[0.5]"])
def test_broken_metrics_file_fails_at_startup(tmp_path, metrics):
    """Not a model that starts and then answers 500 at /api/model."""
    for file in pretrained_path().iterdir():
        (tmp_path / file.name).symlink_to(file)
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "metrics.json").write_text(metrics)
    with pytest.raises(CaptionerError, match="cannot load the model") as raised, TestClient(create_app(Settings(model_path=tmp_path))):
        pass
    assert "metrics.json" in str(raised.value) and "\n" not in str(raised.value)


def test_cli_reports_a_missing_model_in_one_line(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "captioner", "--threads", "1", "serve", "--port", str(port), "--model", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("captioner: error: cannot load the model")


def test_serve_command_listens_on_loopback_unless_told_otherwise(monkeypatch):
    from captioner.cli.commands import main

    listened = []

    def run_without_serving(server, sockets=None):
        listened.append((server.config.host, server.config.port))
        protocol = server.config.http
        assert (protocol.header_timeout, protocol.max_connections) == (Settings().header_timeout, Settings().max_connections)
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run_without_serving)
    monkeypatch.setattr("captioner.server.check_can_listen", lambda host, port: None)  # the ports may be taken on this machine
    assert main(["serve"]) == 0
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert listened == [("127.0.0.1", 5000), ("0.0.0.0", 8123)]


def run_serve(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner", "--threads", "1", "serve", *arguments], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("host, reason", [
    ("999.1.1.1", "is not an IP address or a host name this machine can resolve"),
    ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: never a local address
])
def test_serve_names_a_host_it_cannot_listen_on_in_one_line(host, reason):
    started = time.monotonic()
    result = run_serve("--host", host, "--port", "5000")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, before uvicorn or the model start
    assert result.stderr.startswith(f"captioner: error: --host {host} {reason}") and "--host 127.0.0.1" in result.stderr
    assert "another server" not in result.stderr and time.monotonic() - started < 60


def test_serve_on_a_busy_port_says_so_in_one_line():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_serve("--port", str(port))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"captioner: error: could not listen on 127.0.0.1:{port}; is another server using that port? Try --port"


def test_requests_arriving_together_are_captioned_in_one_batch(client):
    """Dynamic batching: eight requests at once share batches, and each answer is its own photo's."""
    names = ("rocket.jpg", "coffee.jpg", "astronaut.jpg", "chelsea.jpg") * 2
    expected = {name: post_image(client, (EXAMPLES / name).read_bytes(), beam_size=3, num_captions=2).json() for name in set(names)}
    app = app_sharing_model(client, batch_wait_ms=200, max_batch=8)
    with uvicorn_serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http, ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(lambda name: post_image(http, (EXAMPLES / name).read_bytes(), beam_size=3, num_captions=2), names))
        other_options = post_image(http, (EXAMPLES / "chelsea.jpg").read_bytes(), beam_size=2)
    for name, response in zip(names, responses):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["captions"], body["tags"], body["image"]) == (expected[name]["captions"], expected[name]["tags"], expected[name]["image"])
    sizes = app.state.batcher.batch_sizes
    assert sum(sizes) == len(names) + 1 and max(sizes) > 1  # photos went together
    assert other_options.status_code == 200 and len(other_options.json()["captions"]) == 1


FAULTY_SIZE = (97, 61)  # the photo whose encoding fails, told apart by its size


@pytest.fixture
def encode_fails_for_one_photo(client, monkeypatch) -> list[int]:
    """The shared captioner's encode raises for any batch holding the FAULTY_SIZE photo; yields the size of every batch encoded."""
    captioner = client.app.state.captioner
    real_encode, batches = captioner.encode, []

    def encode(images):
        batches.append(len(images))
        if any(getattr(image, "size", None) == FAULTY_SIZE for image in images):
            raise RuntimeError("a fault while encoding one photo")
        return real_encode(images)

    monkeypatch.setattr(captioner, "encode", encode)
    return batches


def test_a_fault_in_one_photo_fails_only_that_photo_not_its_batch(client, encode_fails_for_one_photo):
    names = ("rocket.jpg", "coffee.jpg", "astronaut.jpg")
    photos = {name: (EXAMPLES / name).read_bytes() for name in names} | {"faulty.png": encoded(Image.new("RGB", FAULTY_SIZE, (200, 30, 30)), "PNG")}
    expected = {name: client.app.state.captioner.caption(photos[name], beam_size=2).text for name in names}
    encode_fails_for_one_photo.clear()
    app = app_sharing_model(client, batch_wait_ms=1000, max_batch=len(photos))  # all four go as one batch once they are in
    with uvicorn_serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http, ThreadPoolExecutor(len(photos)) as pool:
        responses = dict(zip(photos, pool.map(lambda name: post_image(http, photos[name], name, beam_size=2), photos)))
    assert app.state.batcher.batch_sizes == [4], "the photos were not captioned as one batch"
    assert encode_fails_for_one_photo == [4, 1, 1, 1, 1]  # the batch, then each photo alone
    message = assert_error(responses["faulty.png"], 500, "internal_error")["message"]
    assert "\n" not in message
    for name in names:
        assert responses[name].status_code == 200, responses[name].text
        assert responses[name].json()["captions"][0]["text"] == expected[name]


def test_a_failed_batch_is_captioned_again_photo_by_photo(client, encode_fails_for_one_photo):
    photos = [Image.new("RGB", (64, 64), (30, 90, 200)), Image.new("RGB", FAULTY_SIZE), Image.new("RGB", (64, 48), (30, 200, 90))]

    async def run_here(function, *args):
        return function(*args)

    async def caption_together():
        batcher = CaptionBatcher(client.app.state.captioner, run_here, threads=1, wait=60, max_batch=len(photos))  # the third starts it
        return batcher, await asyncio.gather(*(batcher.caption(photo, 1, 1) for photo in photos), return_exceptions=True)

    batcher, answers = asyncio.run(caption_together())
    assert batcher.batch_sizes == [3] and encode_fails_for_one_photo == [3, 1, 1, 1]
    assert isinstance(answers[1], RuntimeError)
    assert all(captions[0].text for captions, _ in (answers[0], answers[2]))


def test_a_wide_beam_takes_fewer_photos_per_batch(client):
    """max_beams bounds photos x beam width in one batch: inference memory grows with both."""
    photos = [Image.new("RGB", (64, 64), (30 * index, 90, 200)) for index in range(6)]

    async def run_here(function, *args):
        return function(*args)

    async def caption_together(beam_size):
        batcher = CaptionBatcher(client.app.state.captioner, run_here, threads=1, wait=60, max_batch=len(photos), max_beams=12)
        answers = await asyncio.gather(*(batcher.caption(photo, beam_size, 1) for photo in photos))
        return batcher.batch_sizes, answers

    narrow, _ = asyncio.run(caption_together(2))
    wide, answers = asyncio.run(caption_together(6))
    assert narrow == [6] and wide == [2, 2, 2]
    assert all(captions[0].text for captions, _ in answers)


def test_each_caption_has_a_confidence_and_the_model_its_bands(client):
    body = post_image(client, (EXAMPLES / "coffee.jpg").read_bytes(), beam_size=3, num_captions=3).json()
    assert len(body["captions"]) == 3 and all(0.0 <= caption["confidence"] <= 1.0 for caption in body["captions"])
    expected = client.app.state.captioner.caption((EXAMPLES / "coffee.jpg").read_bytes(), beam_size=3, num_captions=3)
    assert [c["confidence"] for c in body["captions"]] == [c.confidence for c in expected]
    assert body["tags_alt_text"] == "Photo of a cup and coffee."  # the fallback where the caption is a guess
    bands = client.get("/api/model").json()["confidence_bands"]
    assert [band["level"] for band in bands] == ["fairly-sure", "somewhat-sure", "unsure", "guess"] and bands[-1]["minimum"] == 0
    assert [band.minimum for band in client.app.state.captioner.calibration.bands] == [band["minimum"] for band in bands]
