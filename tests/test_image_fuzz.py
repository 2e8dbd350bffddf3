"""Fuzzing the image decoder as the CLI and the server use it (`load_image` on a path and on bytes).

Small valid files in every supported format are damaged byte by byte and by format (JPEG scans
repeated, PNG chunks repeated, TIFF tag types, counts and offsets changed). Seeded, so every run
reads the same files. Each must give an RGB image or a one-line ImageError, never another
exception, in bounded time; the whole run in bounded memory.
"""
from __future__ import annotations

import io
import random
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.errors import ImageError
from captioner.data.images import load_image
from mutations import FORMAT_MUTATIONS, MUTATIONS, mutated_photo

CASES = 1500
SECONDS_PER_FILE = 2.0
PEAK_GROWTH_MIB = 400  # the largest a mutant may claim is refused from its header; the rest decode small


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seeds() -> list[bytes]:
    """Small valid files: TIFF (plain, LZW, deflate, tiled, 16-bit), progressive and baseline JPEG, PNG, WebP, GIF."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return [
        encoded(photo, "TIFF"), encoded(photo, "TIFF", compression="tiff_lzw"), encoded(photo.convert("L"), "TIFF", compression="tiff_adobe_deflate"),
        encoded(photo, "TIFF", tiled=True, tile_size=(16, 16)), encoded(photo.convert("I;16"), "TIFF"),
        encoded(photo, "TIFF", dpi=(72.5, 72.5)),  # resolution tags are rationals (IFDRational)
        encoded(photo, "JPEG", progressive=True), encoded(photo.convert("L"), "JPEG", progressive=True),
        encoded(photo, "JPEG", progressive=True, subsampling=0), encoded(photo, "JPEG"),
        encoded(photo, "PNG"), encoded(photo.convert("RGBA"), "PNG"), encoded(photo.convert("P"), "PNG", transparency=0),
        encoded(photo.convert("I;16"), "PNG"), encoded(photo.convert("LA"), "PNG"),
        encoded(photo, "WEBP", quality=50), encoded(photo.convert("RGBA"), "WEBP", lossless=True),
        encoded(photo, "GIF", save_all=True, append_images=[photo.rotate(90)]), encoded(photo.convert("L"), "GIF"),
    ]


def peak_mib() -> float | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:")) / 1024


def read_one(source) -> str | None:
    """None if `source` reads as an RGB image or a one-line ImageError, else what went wrong."""
    try:
        image = load_image(source, name="mutant")
    except ImageError as error:
        message = str(error)
        return None if message.startswith("mutant") and "\n" not in message and len(message) < 400 else f"bad message {message!r}"
    except Exception as error:  # noqa: BLE001 - any other exception is the failure this test looks for
        return f"{type(error).__name__}: {error}"
    return None if image.mode == "RGB" and min(image.size) > 0 else f"image of mode {image.mode}, size {image.size}"


def test_mutated_files_give_an_image_or_one_line_error(seeds, tmp_path):
    rng = random.Random(17)
    mutations = MUTATIONS + FORMAT_MUTATIONS * 2  # the format-aware ones reach further into the decoders
    problems, slowest = [], 0.0
    before = peak_mib()
    for case in range(CASES):
        data = mutated_photo(rng, seeds, mutations)
        source = data
        if case % 10 == 0:  # the CLI reads paths: a file on disk takes another route (mapped, not copied)
            source = tmp_path / "mutant"
            source.write_bytes(data)
        started = time.perf_counter()
        problem = read_one(source)
        seconds = time.perf_counter() - started
        slowest = max(slowest, seconds)
        if problem or seconds > SECONDS_PER_FILE:
            problems.append(f"case {case} ({len(data)} bytes, {data[:4]!r}, {seconds:.2f} s): {problem or 'too slow'}")
    assert not problems, "\n".join(problems[:20])
    after = peak_mib()
    if before is not None:
        assert after - before < PEAK_GROWTH_MIB, f"peak memory grew by {after - before:.0f} MiB"
