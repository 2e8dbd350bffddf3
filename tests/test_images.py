"""Every supported format and mode decodes to RGB; bad files give one clear ImageError."""
import io
import json
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import captioner.data.images
from captioner.cli.commands import main
from captioner.errors import ImageError
from captioner.data.images import find_images, load_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


RNG_PICTURE = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
RGB = Image.fromarray(RNG_PICTURE)


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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims a huge size: the decompression-bomb shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + png_chunk(b"IEND", b"")


def uniform_png(width: int, height: int, bit_depth: int, colour_type: int, row: bytes, chunks: bytes = b"") -> bytes:
    """A PNG whose every row is `row`: a huge image in a small file, compressed a row at a time."""
    compressor = zlib.compressobj(1)
    data = b"".join(compressor.compress(b"\x00" + row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + chunks + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


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


def gradient(height: int, width: int) -> np.ndarray:
    """A smooth (H, W, 3) picture: it compresses well, and JPEG keeps it close."""
    y, x = np.arange(height)[:, None], np.arange(width)[None, :]
    picture = np.empty((height, width, 3), dtype=np.uint8)
    picture[..., 0], picture[..., 1], picture[..., 2] = (x // 7) % 256, (y // 5) % 256, ((x + y) // 11) % 256
    return picture


def with_alpha(rgb: np.ndarray) -> np.ndarray:
    alpha = (np.arange(rgb.shape[1]) * 255 // (rgb.shape[1] - 1)).astype(np.uint8)  # transparent at the left, opaque at the right
    return np.dstack([rgb, np.broadcast_to(alpha, rgb.shape[:2])])


def every_input(array: np.ndarray, path) -> dict[str, np.ndarray]:
    """The same picture handed over in each way a caller can, each read to RGB."""
    Image.fromarray(array).save(path)
    inputs = {
        "path": path, "bytes": path.read_bytes(), "opened PIL image": Image.open(path), "PIL image": Image.fromarray(array), "array": array,
    }
    return {kind: np.asarray(load_image(source)) for kind, source in inputs.items()}


def test_rgba_reads_the_same_from_every_input(tmp_path):
    rgba = with_alpha(RNG_PICTURE)
    readings = every_input(rgba, tmp_path / "rgba.png")
    for kind, rgb in readings.items():
        assert np.array_equal(rgb, readings["path"]), kind
    assert (readings["array"][:, 0] == 255).all()  # fully transparent: white, not the hidden colour
    assert np.array_equal(readings["array"][:, -1], rgba[:, -1, :3])  # opaque: the colour itself


def test_16_bit_reads_the_same_from_every_input(tmp_path):
    grey = np.random.default_rng(1).integers(0, 65536, (40, 60), dtype=np.uint16)
    readings = every_input(grey, tmp_path / "grey16.png")
    expected = np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=-1)  # scaled to the high byte, not clipped
    for kind, rgb in readings.items():
        assert np.array_equal(rgb, expected), kind
    colour = np.random.default_rng(2).integers(0, 65536, (40, 60, 3), dtype=np.uint16)
    assert np.array_equal(np.asarray(load_image(colour)), colour >> 8)  # as Pillow reads a 16-bit colour file


def test_big_rgba_is_reduced_band_by_band_as_the_whole_would_be(tmp_path):
    rgba = with_alpha(gradient(2101, 3001))
    readings = every_input(rgba, tmp_path / "big.png")
    whole = Image.new("RGB", (3001, 2101), (255, 255, 255))
    whole.paste(Image.fromarray(rgba), mask=Image.fromarray(rgba[..., 3]))
    expected = np.asarray(whole.reduce(2))  # (1051, 1501, 3)
    for kind, rgb in readings.items():
        assert np.array_equal(rgb, expected), kind


def test_large_jpeg_reads_the_same_from_path_bytes_and_an_opened_image(tmp_path):
    path = tmp_path / "large.jpg"
    Image.fromarray(gradient(3000, 4100)).save(path, quality=90)
    readings = {kind: np.asarray(load_image(source)) for kind, source in
                {"path": path, "bytes": path.read_bytes(), "opened PIL image": Image.open(path)}.items()}
    for kind, rgb in readings.items():
        assert rgb.shape == (750, 1025, 3) and np.array_equal(rgb, readings["path"]), kind  # decoded at 1/4 size
    # Pixels already decoded at full size cannot be draft-decoded: box-reduced to the same size instead.
    decoded = np.asarray(Image.open(path))
    from_array, from_pil = np.asarray(load_image(decoded)), np.asarray(load_image(Image.fromarray(decoded)))
    assert np.array_equal(from_array, from_pil) and from_array.shape == (750, 1025, 3)
    assert np.abs(from_array.astype(int) - readings["path"]).mean() < 1


@pytest.mark.parametrize("size, reduced", [
    ((2047, 100), (2047, 100)), ((2048, 100), (1024, 50)), ((4100, 10), (1025, 3)), ((300, 9000), (38, 1125)),
])
def test_big_images_are_reduced_by_a_power_of_two(size, reduced):
    assert load_image(np.zeros((size[1], size[0]), dtype=np.uint8)).size == reduced


def test_exif_rotation_of_a_large_jpeg_follows_the_reduction():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(gradient(3000, 4100)), "JPEG", exif=exif.tobytes())
    assert load_image(data).size == load_image(Image.open(io.BytesIO(data))).size == (750, 1025)


def no_bomb_warnings(caught: list) -> bool:
    return not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (30_000, 30_000)])
def test_too_many_pixels_is_refused_from_the_header_in_our_words(width, height):
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ImageError) as error:
        warnings.simplefilter("always")
        load_image(png_header_only(width, height))
    assert str(error.value) == (f"image bytes: {width:,} x {height:,} pixels is over the 64-megapixel limit "
                                "(a guard against decompression bombs); downscale it first")
    assert no_bomb_warnings(caught)


def test_big_webp_is_refused_before_its_decoder_allocates():
    header = struct.pack("<I", 10) + bytes(4) + (7999).to_bytes(3, "little") + (7999).to_bytes(3, "little")
    data = b"RIFF" + struct.pack("<I", 4 + 8 + 10) + b"WEBP" + b"VP8X" + header
    with pytest.raises(ImageError, match="8,000 x 8,000 pixels is over the 16-megapixel limit for WebP"):
        load_image(data)


def test_cli_reports_a_too_big_photo_in_one_line(tmp_path, capsys):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(10_000, 10_000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["--threads", "1", "caption", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (f"captioner: {path}: 10,000 x 10,000 pixels is over the 64-megapixel limit "
                   "(a guard against decompression bombs); downscale it first\n")
    assert no_bomb_warnings(caught)


PEAK_MEMORY = """
import sys, types
package = types.ModuleType("captioner")  # the image module alone: the package's __init__ would import torch
package.__path__ = [sys.argv[1]]
sys.modules["captioner"] = package
from captioner.data.images import load_image

def peak_mib():  # VmHWM starts afresh with the process, unlike ru_maxrss, which a child inherits from its parent
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) // 1024

before = peak_mib()
for path in sys.argv[2:]:
    load_image(path)
print(peak_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from /proc (Linux)")
def test_peak_memory_of_the_costliest_uploads(tmp_path):
    """64-megapixel PNGs of a few hundred KB each, in the modes that decode to the most bytes."""
    side = 8000
    files = {
        "grey16.png": uniform_png(side, side, 16, 0, b"\x12\x34" * side),
        "palette.png": uniform_png(side, side, 8, 3, b"\x00\x01" * (side // 2), png_chunk(b"PLTE", bytes(6)) + png_chunk(b"tRNS", b"\x00")),
        "rgba.png": uniform_png(side, side, 8, 6, b"\x10\x20\x30\x80" * side),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    package = str(Path(captioner.data.images.__file__).parents[1])  # the package folder, without its __init__
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY, package, *(str(tmp_path / name) for name in files)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    # Pillow holds the decoded RGBA (4 bytes a pixel, 244 MiB); the result (at most 2048 px a side,
    # 16 MiB) and a band at a time may come on top. Before bands, these took 1,040 to 1,590 MiB.
    assert int(result.stdout) < 320


def test_reading_what_load_image_returned_changes_nothing(tmp_path):
    """The CLI and the server read a photo, then hand it to `Captioner.encode`, which reads it again."""
    pixels = np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show upright
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif.tobytes())
    Image.fromarray(pixels).save(tmp_path / "small.png")
    for source in (buffer.getvalue(), tmp_path / "small.png"):
        once = load_image(source)
        again = load_image(once)
        assert again.size == once.size and np.array_equal(np.asarray(again), np.asarray(once))
    assert load_image(buffer.getvalue()).size == (100, 200)  # turned upright once


# ---- JPEG scans: a budget read from the markers, before decoding ----------------------------

def many_scan_jpeg(side: int, scans: int) -> bytes:
    """A grey progressive JPEG whose last scan is repeated: each copy is ~100 bytes and another pass over the image."""
    data = encode(Image.new("L", (side, side), 128), "JPEG", progressive=True)
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - data.count(b"\xff\xda")) + data[end:]


def test_jpeg_layout_counts_scans_and_the_coefficient_buffer():
    from captioner.data.jpeg_layout import read_jpeg_layout

    baseline, progressive = encode(RGB, "JPEG"), encode(RGB, "JPEG", progressive=True, subsampling=0)
    assert (read_jpeg_layout(baseline, RGB.size).scans, read_jpeg_layout(baseline, RGB.size).coefficient_bytes) == (1, 0)
    layout = read_jpeg_layout(progressive, RGB.size)
    assert layout.progressive and layout.scans == 10  # libjpeg's script for colour
    assert layout.coefficient_bytes == 2 * 3 * 40 * 64  # 2 bytes a coefficient, 3 components of 40 x 64 (whole blocks)
    # Markers inside a segment (an EXIF thumbnail is a whole JPEG) are not the photo's scans.
    thumbnail = b"Exif\x00\x00" + encode(RGB, "JPEG", progressive=True)
    with_app1 = progressive[:2] + b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 2) + thumbnail + progressive[2:]
    assert read_jpeg_layout(with_app1, RGB.size).scans == 10
    assert load_image(with_app1).size == RGB.size


def test_many_scan_jpegs_are_refused_from_their_markers_in_one_line(tmp_path):
    """Issue 17: an 8000 x 8000 JPEG with its last scan repeated 200 times (270 KB) took 16.7 s to decode."""
    (tmp_path / "scans.jpg").write_bytes(many_scan_jpeg(1000, 150))
    for source in (tmp_path / "scans.jpg", many_scan_jpeg(4000, 80)):
        started = time.perf_counter()
        with pytest.raises(ImageError) as refused:
            load_image(source)
        assert time.perf_counter() - started < 1
        assert "\n" not in str(refused.value) and "re-save it as a baseline (not progressive) JPEG" in str(refused.value)
    assert str(refused.value).startswith("image bytes: 4,000 x 4,000 JPEG with 80 scans is too slow to decode (1.3 billion samples scanned")
    assert load_image(many_scan_jpeg(1000, 100)).size == (1000, 1000)  # the limit itself passes
    assert load_image(encode(Image.new("RGB", (4000, 3000)), "JPEG", progressive=True)).size == (2000, 1500)  # a real one


# ---- any failure inside a decoder is the photo's one-line error ----------------------------

def tiff_with_float_strip_offsets() -> bytes:
    """Issue 17: a TIFF whose StripOffsets tag has type FLOAT made Pillow raise TypeError."""
    data = bytearray(encode(RGB, "TIFF"))
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    entry = next(ifd + 2 + 12 * i for i in range(count) if struct.unpack_from("<H", data, ifd + 2 + 12 * i)[0] == 273)
    struct.pack_into("<H", data, entry + 2, 11)  # type 11: FLOAT
    return bytes(data)


def test_a_tiff_tag_of_the_wrong_type_is_the_photos_one_line_error(tmp_path):
    (tmp_path / "bad.tif").write_bytes(tiff_with_float_strip_offsets())
    for source, name in ((tmp_path / "bad.tif", str(tmp_path / "bad.tif")), (tiff_with_float_strip_offsets(), "image bytes")):
        with pytest.raises(ImageError) as error:
            load_image(source)
        assert str(error.value) == (f"{name}: image is malformed and cannot be decoded (TypeError: 'float' object cannot be "
                                    "interpreted as an integer); save or export it again")


@pytest.mark.parametrize("failure, message", [
    (ZeroDivisionError("division by zero"), "malformed and cannot be decoded (ZeroDivisionError: division by zero)"),
    (struct.error("unpack requires a buffer of 4 bytes"), "malformed and cannot be decoded (error: unpack requires"),
    (IndexError("tuple index\nout of range"), "malformed and cannot be decoded (IndexError: tuple index out of range)"),
    (MemoryError(), "ran out of memory while decoding it"),
    (SyntaxError("not a TIFF file"), "corrupt or truncated (not a TIFF file)"),
])
def test_any_exception_while_decoding_is_the_photos_one_line_error(monkeypatch, failure, message):
    def failing_load(self):
        raise failure

    sources = (encode(RGB, "PNG"), Image.open(io.BytesIO(encode(RGB.convert("P"), "PNG"))))  # bytes, and a PIL image not yet decoded
    monkeypatch.setattr(captioner.data.images.ImageFile.ImageFile, "load", failing_load)
    for source in sources:
        with pytest.raises(ImageError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
            load_image(source)
        assert "\n" not in str(error.value)


def test_keyboard_interrupt_while_decoding_is_not_swallowed(monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    data = encode(RGB, "PNG")
    monkeypatch.setattr(captioner.data.images.ImageFile.ImageFile, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image(data)


# ---- the commands go on past a photo they cannot read --------------------------------------

@pytest.fixture
def bad_and_good(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "bad.tif").write_bytes(tiff_with_float_strip_offsets())
    (folder / "good.jpg").write_bytes((Path(__file__).parents[1] / "examples" / "astronaut.jpg").read_bytes())
    return folder


def test_caption_prints_an_error_line_for_the_bad_photo_and_captions_the_good_one(bad_and_good, capsys):
    assert main(["--threads", "1", "caption", str(bad_and_good / "bad.tif"), str(bad_and_good / "good.jpg")]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"captioner: {bad_and_good / 'bad.tif'}: image is malformed and cannot be decoded (TypeError: 'float' object "
                                "cannot be interpreted as an integer); save or export it again"]
    assert out.startswith(f"{bad_and_good / 'good.jpg'}\t") and len(out.splitlines()) == 1


def test_caption_output_writes_the_good_records_past_a_bad_photo(bad_and_good, tmp_path, capsys):
    output = tmp_path / "captions.jsonl"
    assert main(["--threads", "1", "caption", str(bad_and_good), "--output", str(output), "--quiet"]) == 1
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["path"] for record in records] == [str(bad_and_good / "good.jpg")] and records[0]["captions"]
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "bad.tif: image is malformed" in err and "Traceback" not in err
    assert main(["--threads", "1", "caption", str(bad_and_good), "--output", str(output), "--quiet"]) == 1  # a rerun goes on too
    assert len(output.read_text().splitlines()) == 1


def test_feature_caching_skips_the_bad_photo(bad_and_good, tmp_path, encoder):
    from captioner.data.datasets import CaptionDataset, ImageRecord
    from captioner.data.features import feature_cache

    dataset = CaptionDataset("photos", bad_and_good, [ImageRecord("bad.tif", ["a photo"], "train"), ImageRecord("good.jpg", ["a photo"], "train")])
    cache = feature_cache(dataset, encoder.name, tmp_path / "cache", ["bad.tif", "good.jpg"], encoder=encoder, device="cpu", workers=0, progress=False, log=lambda _: None)
    assert cache.complete and cache.unreadable == ["bad.tif"]
    assert "TypeError" in cache.unreadable_reasons()["bad.tif"]
