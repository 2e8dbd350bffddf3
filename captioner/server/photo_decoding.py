"""Decoding uploaded photos: `PhotoDecoder` probes each header, then decodes on threads of its own,
so a slow decode never holds the inference threads, within a budget of decoded bytes estimated
from each header (`DecodeMemory`).
"""
from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from ..data.images import MAX_PIXELS, TooCostlyError, TooManyPixelsError, decode_memory, jpeg_layout, load_image, open_header
from ..errors import ImageError
from ..model.encoders import PreprocessConfig, shrink_large
from . import schemas
from .errors import ApiError
from .settings import MB, Settings

# The formats images.FORMATS opens (a browser or phone produces these; JPEG includes multi-picture MPO).
SUPPORTED_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"

T = TypeVar("T")


class DecodeMemory:
    """The bytes photos being decoded hold at once, each estimated from its header before decoding.

    A photo waits (on the event loop) until its estimate fits beside the decodes running; past
    `wait` seconds it is refused with a 503 to retry, and one larger than the whole budget with a 422.
    """

    def __init__(self, capacity: int, wait: float):
        self.capacity, self.wait = capacity, wait
        self.held = 0  # only touched from the event loop, so no lock is needed
        self.most_held = 0  # for tests and benchmarks: the most ever held at once
        self._waiting: list[asyncio.Future] = []

    @asynccontextmanager
    async def hold(self, size: int, what: str) -> AsyncIterator[None]:
        if size > self.capacity:
            raise ApiError(422, "image_too_costly", f"Decoding {what} needs about {size / MB:.0f} MiB, more than the {self.capacity / MB:.0f} MiB "
                           "this server gives one photo; downscale it or save it as a baseline JPEG and try again.")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while self.held + size > self.capacity:
            room = loop.create_future()
            self._waiting.append(room)
            try:
                await asyncio.wait_for(room, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ApiError(503, "decoder_busy", "The server is busy decoding other photos; try again in a moment.", {"Retry-After": "2"}) from None
            finally:
                if room in self._waiting:
                    self._waiting.remove(room)
        self.held += size
        self.most_held = max(self.most_held, self.held)
        try:
            yield
        finally:
            self.held -= size
            for room in self._waiting:  # each waiter checks again whether it fits now
                if not room.done():
                    room.set_result(None)


class PhotoDecoder:
    """Decodes uploads on threads of their own, within the `DecodeMemory` budget.

    Decoding used to run on the inference threads, where one slow photo held up every caption.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.memory = DecodeMemory(settings.decode_memory, settings.decode_wait)
        self.executor = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="captioner-decode")

    async def run(self, function: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def decode(self, data: bytes, preprocess_config: PreprocessConfig) -> tuple[Image.Image, schemas.ImageSize, float]:
        """The photo ready for the encoder, its displayed size, and the milliseconds its decoding took (not its wait)."""
        started = time.perf_counter()
        size, cost, what = await self.run(probe_photo, data, self.settings.max_pixels, self.settings.max_pixels_not_jpeg)
        probed = time.perf_counter() - started
        async with self.memory.hold(cost, what):
            started = time.perf_counter()
            image = await self.run(decode_photo, data, preprocess_config)
        return image, size, round((probed + time.perf_counter() - started) * 1000, 1)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


# ---- the blocking work, run on the decode threads -----------------------------------------

def probe_photo(data: bytes, max_pixels: int, max_pixels_not_jpeg: int = MAX_PIXELS) -> tuple[schemas.ImageSize, int, str]:
    """From the header alone: the photo's displayed size, the bytes decoding it will hold at the
    most, and what it is (for messages); ApiError if unusable. Formats other than JPEG are decoded
    at full size first, so they have their own, lower, limit."""
    if not data:
        raise ApiError(422, "invalid_image", "The uploaded file is empty; choose a photo.")
    try:
        # Identify the format and size from the header alone: unknown formats are a 415, and a
        # decompression bomb is refused before any pixel is decoded.
        with open_header(io.BytesIO(data), "upload", max_pixels) as probe:
            width, height = probe.size
            limit = max_pixels_not_jpeg // 5 if probe.format == "WEBP" else max_pixels_not_jpeg  # WebP's decoder holds several more copies
            if probe.format != "JPEG" and width * height > limit:
                raise _too_many_pixels((width, height), limit, f" for {probe.format} (only JPEG decodes at reduced size); save it as JPEG or")
            layout = jpeg_layout(probe, data, "upload")  # too many scans: refused before decoding
            cost = decode_memory(probe, layout)
            what = f"this {width:,} x {height:,} {'progressive ' if layout and layout.progressive else ''}{probe.format}"
            # The base class's getexif reads the header only (PNG's own decodes the whole image)
            if Image.Image.getexif(probe).get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that swap the axes
                width, height = height, width
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_image", f"That file is not a supported image; send a {SUPPORTED_NAMES} photo.") from None
    except ApiError:
        raise
    except TooManyPixelsError as error:
        raise _too_many_pixels(error.size, error.limit) from None
    except TooCostlyError as error:
        raise ApiError(422, "image_too_costly", error.reason[0].upper() + error.reason[1:] + ", and try again.") from None
    except Exception:  # a header PIL recognises but cannot parse
        raise _corrupt_image() from None
    return schemas.ImageSize(width=width, height=height), cost, what


def decode_photo(data: bytes, preprocess_config: PreprocessConfig) -> Image.Image:
    """Bytes (`probe_photo` accepted them) -> RGB image ready for the encoder; ApiError if it cannot be decoded."""
    try:
        image = load_image(data, name="upload")
    except ImageError:
        raise _corrupt_image() from None
    # The box downscale `preprocess` would apply first, done now so a huge photo's
    # full-size pixels are freed before the encoder runs; the encoder input is unchanged.
    return shrink_large(image, preprocess_config)


def _too_many_pixels(size: tuple[int, int], max_pixels: int, why: str = ";") -> ApiError:
    return ApiError(422, "image_too_large", f"{size[0]:,} x {size[1]:,} pixels is over the {max_pixels / 1e6:g}-megapixel limit{why} downscale the photo and try again.")


def _corrupt_image() -> ApiError:
    return ApiError(422, "invalid_image", "The image is corrupt or truncated and cannot be decoded; save or export it again and retry.")
