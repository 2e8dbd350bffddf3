"""Reading images from anything a user hands us: paths, bytes, PIL images or arrays.

Every entry point (feature caching, training, the CLI, the server) goes through `load_image`,
so EXIF rotation, mode conversion and the decompression-bomb guard are applied identically.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 64_000_000  # anything larger is refused as a likely decompression bomb
# Huge photos are decoded at reduced size (JPEG draft mode) since the encoder sees ~224 px.
DRAFT_SIZE = (1024, 1024)

ImageFile.LOAD_TRUNCATED_IMAGES = False


def find_images(paths: list[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (searched recursively, sorted) into image paths, in input order.

    Returns the image paths and one problem message per input that yielded nothing and per
    folder that could not be read.
    """
    found: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
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
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return found, problems


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageError(f"array of shape {array.shape} is not an image; pass (H, W), (H, W, 3) or (H, W, 4)")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        array = np.asarray(array, dtype=np.float64)
        if array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array[..., :3] if array.shape[-1] == 4 else array, mode="RGB")


def open_image(source: bytes | str | os.PathLike, name: str = "image") -> Image.Image:
    """Decode an image file or bytes to RGB, applying EXIF rotation; raise ImageError on failure."""
    try:
        if isinstance(source, (bytes, bytearray)):
            if len(source) == 0:
                raise ImageError(f"{name}: file is empty (0 bytes)")
            handle = io.BytesIO(source)
        else:
            if os.path.getsize(source) == 0:
                raise ImageError(f"{name}: file is empty (0 bytes)")
            handle = open(source, "rb")
        with handle:
            image = Image.open(handle)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {width} x {height} pixels is over the {MAX_PIXELS:,}-pixel limit "
                    "(possible decompression bomb); downscale it first"
                )
            if image.format == "JPEG":
                image.draft("RGB", DRAFT_SIZE)
            image.seek(0)  # first frame of a GIF or multi-page TIFF
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no extra full-size copy
            return _to_rgb(image)
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
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: image is corrupt or truncated ({error})") from None


def load_image(image: ImageInput, name: str | None = None) -> Image.Image:
    """Turn a path, bytes, PIL image or array into an RGB PIL image."""
    if isinstance(image, Image.Image):
        if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation other than "upright"
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, (bytes, bytearray)):
        return open_image(bytes(image), name or "image bytes")
    if isinstance(image, (str, os.PathLike)):
        return open_image(image, name or str(image))
    raise ImageError(f"cannot read an image from {type(image).__name__}; pass a path, bytes, PIL image or array")
