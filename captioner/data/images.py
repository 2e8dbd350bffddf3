"""Reading images from anything a user hands us: paths, bytes, PIL images or arrays.

Every entry point (feature caching, training, the CLI, the server) goes through `load_image`, and
every kind of input takes the same steps to RGB: EXIF rotation, transparency composited on white,
16-bit kept to its high byte, and big images reduced (the encoder sees ~224 px). Conversion runs a
band of rows at a time, so a big image costs little more than its decoded pixels; JPEGs decode
straight at reduced size. Files are checked against MAX_PIXELS from their header, before any
decoding and before Pillow's own decompression-bomb check (which has another limit and warns), and
JPEGs against a budget of scans (`jpeg_layout`). Whatever fails while reading one image, a
plugin's TypeError on a malformed tag included, is that image's one-line ImageError.
"""
from __future__ import annotations

import errno
import io
import mmap
import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import ImageError
from .jpeg_layout import JpegLayout, read_jpeg_layout

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_PIXELS = 64_000_000  # anything larger is refused as a likely decompression bomb
WEBP_MAX_PIXELS = 16_000_000  # Pillow's WebP decoding holds four copies of the pixels
# Big images are read at 1/2, 1/4, ... of their size, keeping at least this longest side.
DECODE_SIDE = 1024
BAND_PIXELS = 1 << 20  # pixels converted at a time
JPEG_FORMATS = ("JPEG", "MPO")
# Real progressive JPEGs have about 10 scans: libjpeg and Pillow write 10 for colour (6 for grey),
# mozjpeg and Photoshop 3 to 12; a baseline JPEG has 1 (3 when its components are not interleaved).
# Each scan is a pass over its components' blocks (~1.3 ns a sample here, whatever the scan holds),
# so the passes are bounded too: 16 full-size planes of a 64-megapixel photo, ~1.3 s at worst,
# which a 64-megapixel 4:4:4 progressive JPEG from libjpeg (14 planes) still passes.
MAX_JPEG_SCANS = 100
MAX_SCAN_SAMPLES = 16 * MAX_PIXELS
# Bytes a pixel takes in Pillow's memory: RGB is stored in 4, like RGBA.
DECODER_BUFFERS = 4 << 20  # a decoder's own rows, tables and file buffers, roughly
PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
WHITE = (255, 255, 255)
DEEP_MODES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16, "I": np.int32, "F": np.float32}
EXIF_TRANSPOSE = {  # EXIF orientation -> the transpose that shows the photo upright
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}

ImageFile.LOAD_TRUNCATED_IMAGES = False


def find_images(paths: list[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (searched recursively, sorted) into image paths, in input order,
    each photo once (two names of one file, e.g. `p/x.jpg` and `/abs/p/x.jpg`, are one photo).

    Returns the image paths and one problem message per input that yielded nothing and per
    folder that could not be read. Nothing is opened here: a FIFO or a device is named, not read.
    """
    found: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        try:
            mode = os.stat(path).st_mode
        except OSError as error:
            problems.append(f"{path}: {_unreachable(error)}")
            continue
        if stat.S_ISDIR(mode):
            unreadable: list[OSError] = []
            images = sorted(
                Path(folder, name)
                for folder, _, names in os.walk(path, onerror=unreadable.append)
                for name in names
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS and Path(folder, name).is_file()
            )
            problems.extend(f"{error.filename}: cannot read this folder ({error.strerror}); its photos were skipped" for error in unreadable)
            if not images and not unreadable:
                problems.append(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            found.extend(images)
        elif stat.S_ISREG(mode):
            found.append(path)
        else:
            problems.append(f"{path}: is not a regular file ({_file_kind(mode)}); pass image files or folders")
    first: dict[str, Path] = {}  # each photo under the first name it was found by
    for key, path in zip(resolved_paths(found), found):
        first.setdefault(key, path)
    return list(first.values()), problems


def _unreachable(error: OSError) -> str:
    """Why a path given as input cannot be looked at, as a message."""
    if error.errno == errno.ELOOP:
        return "is a symlink loop (a link that leads back to itself); fix or remove the link"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file or folder"
    return f"cannot look at it ({error.strerror})"


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a file or folder"


def resolved_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Each path absolute with every symlink resolved (as `os.path.realpath`), the key that tells
    whether two names are one photo; each folder is resolved once, so a long list costs one lstat a photo."""
    folders: dict[str, str] = {}
    keys = []
    for path in paths:
        folder, name = os.path.split(os.fspath(path))
        if folder not in folders:
            folders[folder] = os.path.realpath(folder or ".")
        key = os.path.join(folders[folder], name)
        keys.append(os.path.realpath(key) if name in ("", ".", "..") or os.path.islink(key) else key)
    return keys


def reduction(size: tuple[int, int]) -> int:
    """The power of two a big image is reduced by: its longest side stays at least DECODE_SIDE."""
    factor = 1
    while max(size) // (2 * factor) >= DECODE_SIDE:
        factor *= 2
    return factor


class TooManyPixelsError(ImageError):
    """An image refused from its header, before any decoding, for having too many pixels."""

    def __init__(self, name: str, size: tuple[int, int], limit: int, kind: str = ""):
        self.size, self.limit = size, limit
        super().__init__(
            f"{name}: {size[0]:,} x {size[1]:,} pixels is over the {limit / 1e6:g}-megapixel limit{kind} "
            "(a guard against decompression bombs); downscale it first"
        )


class TooCostlyError(ImageError):
    """An image refused from its header for costing too much time or memory to decode; `reason` omits the name."""

    def __init__(self, name: str, reason: str):
        self.reason = reason
        super().__init__(f"{name}: {reason}")


def _white_level(dtype: np.dtype, maximum: float) -> float:
    """The value that means white: 1 for 0..1 floats and booleans, 65535 for 16-bit, else 255."""
    if dtype.kind in "fb" and maximum <= 1:
        return 1.0
    if dtype.kind == "u" and dtype.itemsize == 2:
        return 65535.0
    return 255.0 if maximum <= 255 else 65535.0


def _to_uint8(values: np.ndarray, white: float) -> np.ndarray:
    """Scale to 0..255; 16-bit keeps its high byte, as Pillow reads 16-bit colour files."""
    if values.dtype == np.uint8:
        return values
    scale = 255.0 if white == 1.0 else 256.0 / (white + 1.0)
    return np.clip(np.nan_to_num(values * scale), 0, 255).astype(np.uint8)


def _band_to_rgb(band: Image.Image, white: float = 255.0) -> Image.Image:
    """A band of any PIL mode -> 8-bit RGB, transparent pixels composited on white."""
    if band.mode in DEEP_MODES:
        band = Image.fromarray(_to_uint8(np.asarray(band), white))  # (h, w) uint8 -> "L"
    if "transparency" in band.info:  # palette or single-colour transparency becomes alpha
        band = band.convert("RGBA")
    if band.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = band.convert("RGBA")
        background = Image.new("RGB", band.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return band.convert("RGB")


def _assemble(size: tuple[int, int], band: Callable[[int, int], Image.Image]) -> Image.Image:
    """The RGB image from `band(top, bottom)`, each band reduced as it comes so no full-size copy exists."""
    width, height = size
    factor = reduction(size)
    rows = max(1, BAND_PIXELS // (width * factor)) * factor  # whole blocks: bands reduce as the whole would
    if rows >= height:
        image = band(0, height)
        return image.reduce(factor) if factor > 1 else image
    result = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        image = band(top, min(top + rows, height))
        result.paste(image.reduce(factor) if factor > 1 else image, (0, top // factor))
    return result


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """A decoded (or lazily opened) PIL image -> upright RGB, reduced if big."""
    orientation = image.getexif().get(0x0112, 1)
    plain = image.mode in ("RGB", "L") and "transparency" not in image.info
    if plain and image.mode == "RGB" and orientation not in EXIF_TRANSPOSE and reduction(image.size) == 1:
        image.load()  # decoded now, while a file it was opened from is still open
        return image  # already what the encoder reads (as what load_image returned): no copy
    if plain:
        # Pillow reduces these modes without a full-size copy; the same pixels as band by band.
        factor = reduction(image.size)
        rgb = (image.reduce(factor) if factor > 1 else image).convert("RGB")
    else:
        white = _white_level(np.dtype(DEEP_MODES[image.mode]), image.getextrema()[1]) if image.mode in DEEP_MODES else 255.0
        width = image.width
        rgb = _assemble(image.size, lambda top, bottom: _band_to_rgb(image.crop((0, top, width, bottom)), white))
    rgb = rgb.transpose(EXIF_TRANSPOSE[orientation]) if orientation in EXIF_TRANSPOSE else rgb
    rgb.info = {}  # pixels only (a new image here): reading it again must not turn it again
    return rgb


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of any numeric type -> RGB, by the steps files take."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)) or array.size == 0:
        raise ImageError(f"array of shape {array.shape} is not an image; pass (H, W), (H, W, 3) or (H, W, 4)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    white = 255.0 if array.dtype == np.uint8 else _white_level(array.dtype, float(np.nanmax(array)))

    def band(top: int, bottom: int) -> Image.Image:
        return _band_to_rgb(Image.fromarray(np.ascontiguousarray(_to_uint8(array[top:bottom], white))))

    return _assemble((array.shape[1], array.shape[0]), band)


def _webp_size(header: bytes) -> tuple[int, int] | None:
    """A WebP's canvas size from its first 30 bytes (as Pillow's WebP plugin reads it)."""
    if len(header) < 30 or header[:4] != b"RIFF" or header[8:12] != b"WEBP":
        return None
    chunk = header[12:16]
    if chunk == b"VP8 " and header[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(header[26:28], "little") & 0x3FFF, int.from_bytes(header[28:30], "little") & 0x3FFF
    if chunk == b"VP8X":
        return int.from_bytes(header[24:27], "little") + 1, int.from_bytes(header[27:30], "little") + 1
    if chunk == b"VP8L" and header[20] == 0x2F:
        bits = int.from_bytes(header[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def open_header(handle: IO[bytes], name: str = "image", max_pixels: int = MAX_PIXELS) -> ImageFile.ImageFile:
    """`Image.open` for FORMATS that reads the header only and refuses an image over `max_pixels`
    with TooManyPixelsError, instead of Pillow's own check (another limit, a warning below it).
    The result is not decoded yet; `open_image` decodes it."""
    header = handle.read(30)
    size, webp_limit = _webp_size(header), min(max_pixels, WEBP_MAX_PIXELS)
    if size and size[0] * size[1] > webp_limit:  # checked first: its decoder allocates the canvas on opening
        raise TooManyPixelsError(name, size, webp_limit, " for WebP")
    Image.init()
    for format_name in FORMATS:
        factory, accept = Image.OPEN.get(format_name, (None, None))
        accepted = factory and (accept(header[:16]) if accept else True)
        if accepted and not isinstance(accepted, str):  # a string is Pillow's reason for not accepting
            handle.seek(0)
            try:
                image = factory(handle, "")
            except (SyntaxError, IndexError, TypeError, struct.error):  # not this format after all, as in Image.open
                continue
            if image.width * image.height > max_pixels:
                raise TooManyPixelsError(name, image.size, max_pixels)
            return image
    raise UnidentifiedImageError(f"cannot identify image file {name!r}")


def check_jpeg_scans(layout: JpegLayout, size: tuple[int, int], name: str) -> None:
    """TooCostlyError for a JPEG whose scans would take far longer to decode than any photo's."""
    advice = "re-save it as a baseline (not progressive) JPEG"
    if layout.scans > MAX_JPEG_SCANS:
        raise TooCostlyError(name, f"JPEG with {layout.scans:,} scans is over the limit of {MAX_JPEG_SCANS} (photos have about 10, and each scan "
                                   f"is another pass over the image); {advice}")
    if layout.scan_samples > MAX_SCAN_SAMPLES:
        raise TooCostlyError(name, f"{size[0]:,} x {size[1]:,} JPEG with {layout.scans} scans is too slow to decode ({layout.scan_samples / 1e9:.1f} "
                                   f"billion samples scanned, over the limit of {MAX_SCAN_SAMPLES / 1e9:.1f}); {advice} or downscale it")


def _pixel_bytes(mode: str) -> int:
    return PIXEL_BYTES.get(mode, 4)


def decode_memory(image: Image.Image, layout: JpegLayout | None = None) -> int:
    """The bytes reading `image` (opened by `open_header`, not decoded) to RGB holds at its peak, from its header.

    JPEGs decode at 1/2 to 1/8 size (`draft`), plus, for a progressive one, libjpeg's coefficients of
    the whole image; other formats decode at full size (WebP's decoder holds four copies); bands,
    the reduced result and its RGB copy come on top.
    """
    width, height = image.size
    factor = reduction(image.size)
    result = 4 * -(-width // factor) * -(-height // factor)  # RGB, reduced
    if image.format in JPEG_FORMATS:
        scale = min(factor, 8)
        decoded = _pixel_bytes(image.mode) * -(-width // scale) * -(-height // scale)
        converted = 2 * result if factor > scale or image.mode != "RGB" else 0  # else the decoded image is the result
        return decoded + (layout.coefficient_bytes if layout else 0) + converted + DECODER_BUFFERS
    decoded = (4 if image.format == "WEBP" else 1) * _pixel_bytes(image.mode) * width * height
    if image.mode in ("RGB", "L"):  # reduced, then converted, as a whole
        return decoded + (0 if factor == 1 and image.mode == "RGB" else 2 * result) + DECODER_BUFFERS
    band_bytes = 24 if image.mode in DEEP_MODES else 12  # a band's copies while converted (deep ones via float64)
    return decoded + band_bytes * min(width * height, max(BAND_PIXELS, factor * width)) + 2 * result + DECODER_BUFFERS


@contextmanager
def _file_contents(handle: IO[bytes]) -> Iterator[bytes | mmap.mmap]:
    """The whole file behind `handle`, mapped rather than read where the system allows."""
    try:
        contents = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a mappable file
        position = handle.tell()
        handle.seek(0)
        data = handle.read()
        handle.seek(position)
        yield data
        return
    with contents:
        yield contents


def jpeg_layout(image: Image.Image, contents: bytes | bytearray | mmap.mmap, name: str = "image") -> JpegLayout | None:
    """The scans of a JPEG opened by `open_header` from `contents` (TooCostlyError past the scan budget); None for other formats."""
    if image.format not in JPEG_FORMATS:
        return None
    layout = read_jpeg_layout(contents, image.size)
    check_jpeg_scans(layout, image.size, name)
    return layout


def _decode(handle: IO[bytes], size: int, name: str, data: bytes | bytearray | None = None) -> Image.Image:
    if size == 0:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    image = open_header(handle, name)
    if image.format in JPEG_FORMATS:
        if data is not None:
            jpeg_layout(image, data, name)
        else:
            with _file_contents(handle) as contents:
                jpeg_layout(image, contents, name)
    width, height = image.size
    scale = min(reduction(image.size), 8)
    if scale > 1:  # JPEG decodes at 1/2, 1/4 or 1/8 size; other formats ignore drafts
        image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
    return _pil_to_rgb(image)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def reading(name: str) -> Iterator[None]:
    """Turn any exception while reading one image into its one-line ImageError.

    Pillow's plugins raise more than OSError on malformed files (TypeError from a TIFF tag of the
    wrong type, ZeroDivisionError, struct.error, IndexError...): any of them is this image's problem,
    never the run's. KeyboardInterrupt and SystemExit pass; running out of memory is said as such.
    """
    try:
        yield
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a supported image (use JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    except Image.DecompressionBombError:  # Pillow's own check, on a GIF frame or TIFF tile larger than the header said
        raise ImageError(f"{name}: refused as a possible decompression bomb (a frame far larger than the image)") from None
    except MemoryError:
        raise ImageError(f"{name}: ran out of memory while decoding it; downscale it or free memory and retry") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: image is corrupt or truncated ({_one_line(error)})") from None
    except Exception as error:  # a plugin failing on a malformed file
        raise ImageError(f"{name}: image is malformed and cannot be decoded ({type(error).__name__}: {_one_line(error)}); "
                         "save or export it again") from None


def open_image(source: bytes | bytearray | str | os.PathLike, name: str = "image") -> Image.Image:
    """Decode an image file or bytes to upright RGB, reduced while decoding if big; raise ImageError on failure."""
    with reading(name):
        if isinstance(source, (bytes, bytearray)):
            return _decode(io.BytesIO(source), len(source), name, source)
        with open(source, "rb") as handle:
            return _decode(handle, os.fstat(handle.fileno()).st_size, name)


def _undecoded_jpeg(image: Image.Image) -> bytes | None:
    """The file behind a JPEG opened but not yet decoded, so it is read (at reduced size) as a path would be."""
    handle = getattr(image, "fp", None)
    if image.format not in ("JPEG", "MPO") or not getattr(image, "tile", None) or handle is None or image.tell() != 0:
        return None
    position = handle.tell()
    handle.seek(0)
    data = handle.read()
    handle.seek(position)
    return data


def load_image(image: ImageInput, name: str | None = None) -> Image.Image:
    """Turn a path, bytes, PIL image or array into an upright RGB PIL image, big ones reduced."""
    if isinstance(image, (bytes, bytearray)):
        return open_image(bytes(image), name or "image bytes")
    if isinstance(image, (str, os.PathLike)):
        return open_image(image, name or str(image))
    with reading(name or "image"):
        if isinstance(image, Image.Image):
            data = _undecoded_jpeg(image)
            return open_image(data, name or "image") if data is not None else _pil_to_rgb(image)
        if isinstance(image, np.ndarray):
            return _array_to_rgb(image)
    raise ImageError(f"cannot read an image from {type(image).__name__}; pass a path, bytes, PIL image or array")
