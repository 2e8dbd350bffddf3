"""Fuzzing the caption endpoint: hundreds of mutated photos and malformed multipart forms.

Seeded, so every run sends the same requests; sized to take seconds. Every answer must be a
caption or one of the API's JSON errors (never a 500), and nothing may log a traceback.
"""
from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from captioner.server import Settings, create_app
from mutations import mutated_photo

EXAMPLES = Path(__file__).parents[1] / "examples"
CLIENT_ERRORS = {400, 408, 413, 415, 422}
PHOTO_CASES, FORM_CASES = 300, 200


@pytest.fixture(scope="module")
def client():
    torch.set_num_threads(1)
    with TestClient(create_app(Settings()), raise_server_exceptions=False) as client:  # a 500 is an answer to check
        yield client


@pytest.fixture(scope="module")
def seeds() -> list[bytes]:
    """Small valid photos in every supported format and the unusual modes, from the example photos."""
    photo = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB").resize((40, 32))
    variants = [
        (photo, "JPEG", {}), (photo, "JPEG", {"progressive": True}), (photo.convert("L"), "JPEG", {}), (photo.convert("CMYK"), "JPEG", {}),
        (photo, "PNG", {}), (photo.convert("RGBA"), "PNG", {}), (photo.convert("P"), "PNG", {"transparency": 0}),
        (photo.convert("I;16"), "PNG", {}), (photo.convert("1"), "PNG", {}), (photo.convert("LA"), "PNG", {}),
        (photo, "GIF", {"save_all": True, "append_images": [photo.rotate(90)]}), (photo, "WEBP", {"quality": 50}),
        (photo.convert("RGBA"), "WEBP", {"lossless": True}), (photo, "BMP", {}), (photo, "TIFF", {}),
        (photo.convert("I;16"), "TIFF", {"compression": "tiff_lzw"}),
    ]
    return [_encoded(image, format, options) for image, format, options in variants]


def _encoded(image: Image.Image, format: str, options: dict) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


# ---- malformed multipart forms ------------------------------------------------------------

BOUNDARIES = ["b", "x" * 70, "x" * 256, "x" * 257, "x" * 2000, '"quoted"', "with space", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "--", "ü"]
CONTENT_TYPES = [
    "multipart/form-data; boundary={b}", "MULTIPART/FORM-DATA; BOUNDARY={b}", 'multipart/form-data; boundary="{b}"',
    "multipart/form-data; charset=utf-8; boundary={b}", "multipart/form-data; boundary={b}; boundary=other",
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/mixed; boundary={b}",
    "application/x-www-form-urlencoded", "text/plain", "image/jpeg", ";;;", "",
]
FIELD_NAMES = ["image", "image", "image", "IMAGE", "", "beam_size", "num_captions", "x" * 1000, "imäge", 'im"age', "image[]"]
OPTION_VALUES = [b"", b"1", b"3", b"-1", b"0", b"11", b"3.0", b"1e9", b"0x3", b" 3 ", "\uff13".encode(), b"\x00", b"9" * 40, b"\xff\xfe", b"true"]
PART_HEADERS = [
    'Content-Disposition: form-data; name="{name}"; filename="photo.jpg"',
    'Content-Disposition: form-data; name="{name}"',
    "Content-Disposition: form-data; name={name}",
    "Content-Disposition: form-data; name*=UTF-8''{name}",
    'Content-Disposition: attachment; name="{name}"',
    "Content-Disposition: form-data",
    'content-disposition:form-data;name="{name}";filename=""',
    "Content-Type: image/jpeg",
    "X-No-Colon-Here",
    "Content-Disposition: " + "a" * 5000,
]


def malformed_form(rng: random.Random, seeds: list[bytes]) -> tuple[bytes, dict[str, bytes]]:
    """A multipart body built from unusual boundaries, headers, names and values, sometimes then corrupted."""
    boundary = rng.choice(BOUNDARIES[:1] * len(BOUNDARIES) + BOUNDARIES)  # half the forms with a plain boundary
    newline = b"\r\n" if rng.random() < 0.8 else b"\n"
    parts = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 5))):
        name = rng.choice(FIELD_NAMES)
        headers = [rng.choice(PART_HEADERS).format(name=name) for _ in range(rng.choice((0, 1, 1, 1, 2)))]
        content = rng.choice(seeds) if name.lower().startswith("im") and rng.random() < 0.7 else rng.choice(OPTION_VALUES)
        parts.append(newline.join(header.encode() for header in headers) + newline + newline + content)
    delimiter = b"--" + boundary.encode()
    body = (rng.choice((b"", b"preamble" + newline)) + b"".join(delimiter + newline + part + newline for part in parts)
            + rng.choice((delimiter + b"--" + newline, delimiter + b"--", b"", delimiter, b"epilogue")))
    if body and rng.random() < 0.3:
        body = mutated_photo(rng, [body])  # the same byte-level damage, to the form itself
    content_type = rng.choice(CONTENT_TYPES[:1] * len(CONTENT_TYPES) + CONTENT_TYPES).format(b=boundary)  # mostly the right type
    return body, ({"content-type": content_type.encode()} if content_type else {})  # bytes: UTF-8 is allowed through


# ---- the test -----------------------------------------------------------------------------

def check_answer(response) -> str | None:
    """None if the answer is a caption or a well-formed client error, else what is wrong with it."""
    if response.headers.get("x-content-type-options") != "nosniff":
        return f"status {response.status_code} without X-Content-Type-Options: nosniff"
    if response.status_code == 200:
        return None if response.json().get("captions") else "200 without captions"
    if response.status_code not in CLIENT_ERRORS:
        return f"status {response.status_code}: {response.text[:200]}"
    error = response.json().get("error", {})
    return None if error.get("code") and error.get("message", "").strip() else f"malformed error body {response.text[:200]}"


def test_fuzzed_uploads_and_forms_never_500_nor_log_a_traceback(client, seeds, caplog):
    caplog.set_level(logging.INFO)
    rng = random.Random(20240607)
    problems = []
    for case in range(PHOTO_CASES):
        photo = mutated_photo(rng, seeds)
        options = {"beam_size": "1"} if rng.random() < 0.9 else {"beam_size": "2", "num_captions": "2"}  # beam 1 keeps it fast
        response = client.post("/api/captions", files={"image": ("photo", photo, "application/octet-stream")}, data=options)
        if problem := check_answer(response):
            problems.append(f"photo case {case}: {problem}")
    for case in range(FORM_CASES):
        body, headers = malformed_form(rng, seeds)
        content = body if rng.random() < 0.8 else (body[i:i + 997] for i in range(0, len(body), 997))  # sometimes chunked
        response = client.post("/api/captions", content=content, headers=headers)
        if problem := check_answer(response):
            problems.append(f"form case {case}: {problem}")
    assert not problems, "\n".join(problems[:20])
    assert not [record for record in caplog.records if record.exc_info], caplog.text[-5000:]
    assert "Traceback" not in caplog.text
