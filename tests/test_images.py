"""Every supported format and mode decodes to RGB; bad files give one clear ImageError."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from captioner.errors import ImageError
from captioner.images import find_images, load_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats(fmt):
    image = load_image(encode(RGB, fmt))
    assert image.mode == "RGB" and image.size == (60, 40)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    source = RGB.convert(mode) if mode != "I;16" else Image.fromarray(np.full((40, 60), 65535, dtype=np.uint16))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    image = load_image(encode(source, fmt))
    assert image.mode == "RGB" and image.size == (60, 40)
    if mode == "I;16":
        assert np.asarray(image).min() == 255  # full-scale 16-bit white stays white


def test_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image = load_image(encode(RGB, "JPEG", exif=exif.tobytes()))
    assert image.size == (40, 60)


def test_gif_first_frame():
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue()).getpixel((5, 5))[0] > 200


def test_arrays_and_pil_images():
    assert load_image(np.zeros((8, 9), dtype=np.uint8)).size == (9, 8)
    assert load_image(np.ones((8, 9, 3), dtype=np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(RGB.convert("RGBA")).mode == "RGB"


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims a huge size: the decompression-bomb shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, this is text", "not a supported image"),
    (encode(RGB, "JPEG")[:300], "corrupt or truncated"),
    (png_header_only(20000, 20000), "decompression bomb"),
])
def test_bad_bytes(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_bad_paths(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "zero.jpg")
    with pytest.raises(ImageError, match="cannot read an image"):
        load_image(3.14)


def test_find_images_expands_folders_in_order(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "b/1.jpg", "b/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "z.jpg").write_bytes(b"x")
    found, problems = find_images([tmp_path / "z.jpg", tmp_path / "b", tmp_path / "empty", tmp_path / "missing.jpg"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["z.jpg", "b/1.jpg", "b/2.png"]
    assert len(problems) == 2 and "no images" in problems[0] and "no such file" in problems[1]
