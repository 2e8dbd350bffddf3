"""The web app: `create_app(settings)` builds a FastAPI app serving the JSON API and the page.

The model is loaded once, in the app's lifespan, and reached through the `get_captioner`
dependency. Uploads are streamed into memory with the size limit checked on every chunk (never
spooled to disk, never logged), under a per-client read timeout and a shared memory budget. Only a
fully received upload is admitted to the bounded `InferenceQueue`, so a stalled client never holds
an inference slot; a full queue answers a quick 503. Photos are decoded by `PhotoDecoder` on
threads of their own, so a slow decode never holds the inference threads, within a budget of
decoded bytes estimated from each header (`DecodeMemory`); inference runs on the queue's threads.
"""
from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..alt_text import tags_alt_text
from ..api import Captioner
from ..caption_style import written
from ..encoders import PreprocessConfig, shrink_large
from ..errors import CaptionerError, ImageError
from ..explain import check_explainable
from ..images import MAX_PIXELS, TooCostlyError, TooManyPixelsError, decode_memory, jpeg_layout, load_image, open_header
from . import schemas
from .batching import CaptionBatcher
from .examples import example_photos
from .malloc import fix_mmap_threshold
from .security_headers import SecurityHeaders, inline_script_policy

logger = logging.getLogger("captioner.server")

MB = 1024 * 1024
CLOSE = {"Connection": "close"}  # the rest of an unread body cannot be told from the next request
STATIC = Path(__file__).parent / "static"
TITLE = "Captioner"
# The formats images.FORMATS opens (a browser or phone produces these; JPEG includes multi-picture MPO).
SUPPORTED_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
MULTIPART_OVERHEAD = 64 * 1024  # part headers, boundaries and the option fields around the image
OPTION_FIELD_BYTES = 32
OPTION_FIELDS = tuple(schemas.CaptionOptions.model_fields)  # beam_size, num_captions, style, neutral

T = TypeVar("T")


class Settings(BaseModel):
    """Everything a deployment may change; `serve()` and tests build one and pass it to `create_app`."""

    model_config = ConfigDict(frozen=True)

    model_path: Path | None = Field(None, description="Model folder; None loads the shipped default model.")
    max_upload_bytes: int = Field(10 * MB, gt=0)
    max_pixels: int = Field(MAX_PIXELS, gt=0, le=MAX_PIXELS, description="Larger images are refused before decoding.")
    max_pixels_not_jpeg: int = Field(
        20_000_000, gt=0, le=MAX_PIXELS,
        description="Larger PNG, GIF, BMP or TIFF images (and WebP over a fifth of it) are refused from the header: they decode at full size before they can be reduced, and this keeps the server under 600 MiB.",
    )
    queue_size: int = Field(8, ge=0, description="Caption jobs admitted at once (running or waiting); the rest get 503.")
    inference_threads: int = Field(1, ge=1, description="Jobs run side by side; each already uses all of PyTorch's threads.")
    upload_timeout: float = Field(30.0, gt=0, description="Seconds to receive a whole upload; a slower one gets 408.")
    read_timeout: float = Field(10.0, gt=0, description="Seconds a client may send nothing in the middle of an upload; then 408.")
    batch_wait_ms: float = Field(0.0, ge=0, le=1000, description="Dynamic batching: how long a photo waits for others to be captioned with it (0: an idle server starts at once; under load photos gather while the threads are busy).")
    max_batch: int = Field(8, ge=1, le=64, description="Dynamic batching: most photos captioned together (1 turns batching off).")
    max_beams: int = Field(24, ge=1, description="Most photos x beam width in one batch (beam 10: 2 photos at a time): bounds inference memory.")
    device: str | None = Field(None, description="auto (a CUDA GPU when present), cpu, cuda or cuda:N; None: CAPTIONER_DEVICE, else auto.")
    backend: str | None = Field(None, description="pytorch or onnxruntime (the CPU; a model folder is exported in memory at load); None: onnxruntime for an ONNX export folder, else pytorch.")
    upload_memory: int | None = Field(None, gt=0, description="Bytes of uploads held at once, received or waiting; None: room for 3 full uploads (with the decode budget, what keeps the server under 600 MiB). Past it, 503.")
    decode_memory: int = Field(
        72 * MB, gt=0,
        description="Bytes the photos being decoded may hold at once, estimated from each header (a progressive JPEG holds its whole image's coefficients). A photo waits for room, up to decode_wait seconds, then 503; one that alone needs more is refused with 422.",
    )
    decode_wait: float = Field(10.0, gt=0, description="Seconds a photo may wait for room in decode_memory; then 503.")
    decode_threads: int = Field(2, ge=1, description="Photos decoded side by side, on threads of their own: a slow decode never holds the inference threads.")
    header_timeout: float = Field(15.0, gt=0, description="Seconds a connection has to send a request's headers, from opening or from the last answer; then it is closed. Applied by `serve()` (uvicorn has no such timeout).")
    max_connections: int = Field(1000, ge=1, description="Connections open at once; past it the one idle longest is closed (or the new one, when all are busy). Applied by `serve()`.")

    @model_validator(mode="after")
    def _one_upload_fits(self) -> Settings:
        if self.upload_memory is not None and self.upload_memory < self.max_upload_bytes + MULTIPART_OVERHEAD:
            raise ValueError("upload_memory must hold at least one upload of max_upload_bytes plus 64 KiB of form overhead")
        return self

    @property
    def upload_memory_limit(self) -> int:
        return self.upload_memory or 3 * (self.max_upload_bytes + MULTIPART_OVERHEAD)


class ApiError(Exception):
    """An error a client caused or can retry; rendered as {"error": {"code", "message"}}."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class InferenceQueue:
    """Admits at most `capacity` jobs at once and runs them on a small thread pool.

    A request that finds the queue full is refused at once (503) instead of waiting, so a burst
    costs a few small responses rather than a pile of uploads held in memory.
    """

    def __init__(self, capacity: int, threads: int):
        self.capacity = capacity
        self.admitted = 0  # only touched from the event loop, so no lock is needed
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="captioner-inference")

    def try_admit(self) -> bool:
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self.try_admit():
            raise ApiError(503, "queue_full", "The server is busy captioning other photos; try again in a moment.", {"Retry-After": "1"})
        try:
            yield
        finally:
            self.leave()

    async def run(self, function: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class UploadMemory:
    """The bytes of uploads held at once, from the first byte received until the answer is sent.

    Uploads are read before they are admitted to the queue, so this, not the queue, bounds their
    memory. A client is charged only for what it has sent: a stalled one costs almost nothing.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.held = 0  # only touched from the event loop, so no lock is needed

    @contextmanager
    def account(self) -> Iterator[Callable[[int], None]]:
        """Yield `hold(size)`, which charges size bytes (ApiError 503 past the budget); all given back on exit."""
        charged = 0

        def hold(size: int) -> None:
            nonlocal charged
            if self.held + size > self.capacity:
                raise ApiError(503, "queue_full", "The server is busy receiving other photos; try again in a moment.", {"Retry-After": "1"})
            self.held += size
            charged += size

        try:
            yield hold
        finally:
            self.held -= charged


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


# ---- dependencies -------------------------------------------------------------------------

def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_captioner(request: Request) -> Captioner:
    captioner = getattr(request.app.state, "captioner", None)
    if captioner is None:
        raise ApiError(503, "model_not_loaded", "The model is not loaded yet; try again in a moment.", {"Retry-After": "5"})
    return captioner


def get_inference_queue(request: Request) -> InferenceQueue:
    return request.app.state.inference_queue


def get_upload_memory(request: Request) -> UploadMemory:
    return request.app.state.upload_memory


def get_photo_decoder(request: Request) -> PhotoDecoder:
    return request.app.state.photo_decoder


SettingsDependency = Annotated[Settings, Depends(get_settings)]
CaptionerDependency = Annotated[Captioner, Depends(get_captioner)]
QueueDependency = Annotated[InferenceQueue, Depends(get_inference_queue)]
UploadMemoryDependency = Annotated[UploadMemory, Depends(get_upload_memory)]
DecoderDependency = Annotated[PhotoDecoder, Depends(get_photo_decoder)]


# ---- reading the upload -------------------------------------------------------------------

class FieldTooLarge(Exception):
    """A form field passed its byte limit; `args[0]` is its name."""


class FormReader:
    """Parses a multipart/form-data body chunk by chunk into memory.

    Only known fields are kept, each under its own byte limit; unknown ones are named (for the
    error message) but their content is dropped as it streams past.
    """

    def __init__(self, boundary: bytes, limits: dict[str, int]):
        self.limits = limits
        self.fields: dict[str, bytearray] = {}
        self.unknown: list[str] = []
        self.complete = False
        self._name: str | None = None
        self._header_field, self._header_value, self._disposition = bytearray(), bytearray(), b""
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        })

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def _part_begin(self) -> None:
        self._name, self._disposition = None, b""

    def _header_end(self) -> None:
        if bytes(self._header_field).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, parameters = parse_options_header(self._disposition)
        name = parameters.get(b"name", b"").decode("utf-8", "replace")
        if name in self.limits:
            self._name = name
            self.fields[name] = bytearray()  # a repeated field replaces the earlier one
        elif len(self.unknown) < 5:
            self.unknown.append(name[:40])

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name is None:
            return
        buffer = self.fields[self._name]
        if len(buffer) + (end - start) > self.limits[self._name]:
            raise FieldTooLarge(self._name)
        buffer.extend(data[start:end])

    def _end(self) -> None:
        self.complete = True


def _upload_too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"The photo is larger than the {limit / MB:g} MB upload limit; send a smaller or more compressed copy.")


def multipart_boundary(content_type: str | None) -> bytes:
    kind, parameters = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "Send the photo as multipart/form-data, in a file field named 'image'.")
    boundary = parameters.get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed_request", "The multipart/form-data body has no boundary in its Content-Type header.")
    return boundary


async def body_chunks(request: Request, settings: Settings) -> AsyncIterator[bytes]:
    """The body's chunks; ApiError 408 when the client goes quiet for `read_timeout` or the upload passes `upload_timeout`."""
    # One deadline checked at every chunk rather than an outer wait_for: a cancellation that
    # arrives as a chunk does can be swallowed by the inner wait_for (Python < 3.12).
    deadline = time.monotonic() + settings.upload_timeout
    stream = request.stream()
    while True:
        wait = min(settings.read_timeout, deadline - time.monotonic())
        try:
            chunk = await asyncio.wait_for(anext(stream), max(wait, 0.0))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            if wait < settings.read_timeout:
                raise ApiError(408, "upload_timeout", f"The upload took longer than {settings.upload_timeout:g} s; check the connection and try again.", CLOSE) from None
            raise ApiError(408, "upload_timeout", f"The upload stalled for {settings.read_timeout:g} s; check the connection and try again.", CLOSE) from None
        yield chunk


async def read_caption_form(request: Request, settings: Settings, hold: Callable[[int], None]) -> tuple[bytes, schemas.CaptionOptions]:
    """Stream the body into memory, refusing it as soon as it passes the limit; `hold` charges each chunk."""
    max_upload_bytes = settings.max_upload_bytes
    body_limit = max_upload_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise _upload_too_large(max_upload_bytes)  # refused before a byte of it is read
    boundary = multipart_boundary(request.headers.get("content-type"))
    received = 0
    try:
        reader = FormReader(boundary, {"image": max_upload_bytes, **{name: OPTION_FIELD_BYTES for name in OPTION_FIELDS}})
        async for chunk in body_chunks(request, settings):
            received += len(chunk)
            if received > body_limit:
                raise _upload_too_large(max_upload_bytes)
            hold(len(chunk))
            reader.write(chunk)
    except FieldTooLarge as error:
        if error.args[0] == "image":
            raise _upload_too_large(max_upload_bytes) from None
        raise ApiError(422, "invalid_options", f"The form field '{error.args[0]}' is too long; send a small number.") from None
    except FormParserError as error:  # a bad body, or a boundary the parser refuses (over 256 characters)
        raise ApiError(400, "malformed_request", f"The multipart/form-data body could not be parsed ({error}).") from None
    except ClientDisconnect:
        logger.info("client disconnected during an upload after %d bytes", received)
        raise ApiError(400, "client_disconnected", "The connection closed before the whole upload arrived; send the photo again.") from None
    if not reader.complete:
        raise ApiError(400, "malformed_request", "The multipart/form-data body ended early; send the whole form.")
    if reader.unknown:
        raise ApiError(422, "invalid_options", f"Unknown form field(s): {', '.join(map(repr, reader.unknown))}; send image and any of {', '.join(OPTION_FIELDS)}.")
    image = reader.fields.pop("image", None)
    if image is None:
        raise ApiError(422, "missing_image", "Send the photo in a file field named 'image'.")
    try:
        options = schemas.CaptionOptions.model_validate({name: value.decode("utf-8", "replace") for name, value in reader.fields.items()})
    except ValidationError as error:
        raise ApiError(422, "invalid_options", _describe(error)) from None
    return bytes(image), options


async def discard_body(request: Request, max_bytes: int, timeout: float) -> None:
    """Read and drop what is left of the body (bounded in bytes and time) before an early error.

    A server that answers and closes while upload bytes are still unread makes the kernel reset
    the connection, and the reset can overtake the answer: the client would see a network error
    instead of, say, the 503. Draining also lets the connection be reused.
    """
    async def drain() -> None:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                return

    try:
        await asyncio.wait_for(drain(), timeout)
    except (asyncio.TimeoutError, ClientDisconnect, RuntimeError):  # RuntimeError: the body was already read
        pass


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems) + "."


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


def caption_batcher(captioner: Captioner, queue: InferenceQueue, settings: Settings) -> CaptionBatcher:
    """Photos arriving within `batch_wait_ms` of each other are encoded and captioned together."""
    return CaptionBatcher(captioner, queue.run, settings.inference_threads, settings.batch_wait_ms / 1000, settings.max_batch, settings.max_beams)


# ---- routes -------------------------------------------------------------------------------

def _errors(*statuses: int) -> dict:
    descriptions = {
        400: "Malformed multipart body", 408: "Upload too slow", 413: "Upload over the size limit", 415: "Not a supported image, or not multipart/form-data",
        422: "Bad options, or a corrupt, truncated, too-large or too costly image", 503: "Inference queue, upload or decode memory full, or model not loaded; retry",
    }
    return {status: {"model": schemas.ErrorResponse, "description": descriptions[status]} for status in statuses}


CAPTION_FORM_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schemas.CaptionForm.model_json_schema()}}}}

router = APIRouter()


# Errors about the body's delivery itself: never wait for more of it.
UNDRAINED_ERRORS = {"upload_timeout", "upload_too_large", "client_disconnected"}


async def with_uploaded_photo(
    request: Request, captioner: Captioner, queue: InferenceQueue, memory: UploadMemory, decoder: PhotoDecoder, settings: Settings,
    work: Callable[[Image.Image, schemas.CaptionOptions], Awaitable[T]],
) -> tuple[T, schemas.ImageSize, float]:
    """Receive the form, decode its photo on the decoding threads and `await work(image, options)`:
    its result, the photo's size and the decoding time in ms. The upload is held in memory only."""
    try:
        with memory.account() as hold:
            data, options = await read_caption_form(request, settings, hold)
            with queue.slot():  # only now, so a slow or stalled upload never holds an inference slot
                image, size, decode_ms = await decoder.decode(data, captioner.preprocess_config)
                del data  # the upload's bytes are not needed while the photo waits for its batch
                return await work(image, options), size, decode_ms
    except ApiError as error:
        if error.code not in UNDRAINED_ERRORS:
            await discard_body(request, settings.max_upload_bytes + MULTIPART_OVERHEAD, timeout=2.0)
        raise


@router.post(
    "/api/captions", response_model=schemas.CaptionResponse, summary="Caption a photo",
    responses=_errors(400, 408, 413, 415, 422, 503), openapi_extra=CAPTION_FORM_DOC,
)
async def create_caption(
    request: Request, captioner: CaptionerDependency, queue: QueueDependency, memory: UploadMemoryDependency, decoder: DecoderDependency,
    settings: SettingsDependency,
) -> schemas.CaptionResponse:
    """Upload a photo as the multipart field `image`, with optional fields `beam_size`, `num_captions`,
    `style` (`sentence` or `plain`) and `neutral` (`true` for person words without gender).

    The answer holds the captions, best first, and the photo's visual concepts (`tags`), most probable first.
    The upload is held in memory only, never written to disk or logged.
    """
    started = time.perf_counter()
    async def caption(image: Image.Image, options: schemas.CaptionOptions):
        return await request.app.state.batcher.caption(image, options.beam_size, options.num_captions), options

    ((captions, timings), options), size, decode_ms = await with_uploaded_photo(request, captioner, queue, memory, decoder, settings, caption)
    timings = {"decode": decode_ms, **timings, "total": round((time.perf_counter() - started) * 1000, 1)}
    photo_tags = captions[0].tags if captions else []  # the photo's, on every caption
    tags = [schemas.Tag(word=t.word, score=t.score) for t in photo_tags]
    return schemas.CaptionResponse(
        captions=[schemas.Caption(text=written(c.text, options.style, options.neutral), score=c.score, confidence=c.confidence) for c in captions], tags=tags,
        tags_alt_text=tags_alt_text(photo_tags, captioner.concept_detector.table.words), model=captioner.name, image=size,
        timing_ms=schemas.Timings(**timings),
    )


MAP_DECIMALS = 4  # a 7 x 7 map in under 400 bytes of JSON


@router.post(
    "/api/explain", response_model=schemas.ExplainResponse, summary="Where each word of the caption looked",
    responses=_errors(400, 408, 413, 415, 422, 503), openapi_extra=CAPTION_FORM_DOC,
)
async def explain_caption(
    request: Request, captioner: CaptionerDependency, queue: QueueDependency, memory: UploadMemoryDependency, decoder: DecoderDependency,
    settings: SettingsDependency,
) -> schemas.ExplainResponse:
    """Upload a photo as for `POST /api/captions` (`num_captions` is ignored): the best caption and,
    per word, its attention map over the photo, a small grid of rows x columns summing to 1.

    Only for models with an attention or transformer decoder on the pytorch backend (`attention_maps` in `GET /api/model`).
    """
    try:
        check_explainable(captioner.decoder)
    except CaptionerError as error:
        await discard_body(request, settings.max_upload_bytes + MULTIPART_OVERHEAD, timeout=2.0)
        raise ApiError(422, "no_attention_maps", f"This server's model cannot show where words looked: {error}.") from None
    (_, explanations), size, _ = await with_uploaded_photo(
        request, captioner, queue, memory, decoder, settings, lambda image, options: queue.run(captioner.explain_batch, [image], options.beam_size, 1, options.style, options.neutral),
    )
    explained = explanations[0]
    rows, columns = explained.maps.shape[1:]
    words = [
        schemas.WordMap(word=word, map=np.round(grid_map, MAP_DECIMALS).tolist(), grid_share=round(float(min(share, 1.0)), MAP_DECIMALS))
        for word, grid_map, share in zip(explained.words, explained.maps, explained.grid_share)
    ]
    return schemas.ExplainResponse(caption=explained.caption, words=words, grid=schemas.GridSize(rows=rows, columns=columns), model=captioner.name, image=size)


@router.get("/api/examples", response_model=list[schemas.ExamplePhoto], summary="The example photos the page offers")
async def list_examples(request: Request) -> list[schemas.ExamplePhoto]:
    return [schemas.ExamplePhoto(name=name, url=f"/examples/{name}") for name in request.app.state.examples]


@router.get("/examples/{name}", include_in_schema=False)
async def example_photo(request: Request, name: str) -> FileResponse:
    path = request.app.state.examples.get(name)  # only the listed names: nothing else on disk is reachable
    if path is None:
        raise ApiError(404, "not_found", f"There is no example photo named {name[:60]!r}; GET /api/examples lists them.")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get("/api/model", response_model=schemas.ModelInfo, summary="The loaded model", responses=_errors(503))
async def model_info(request: Request, captioner: CaptionerDependency) -> schemas.ModelInfo:
    decoder = dict(captioner.config["decoder"])
    return schemas.ModelInfo(
        name=captioner.name, encoder=captioner.config["encoder"],
        decoder=schemas.DecoderInfo(kind=decoder.pop("kind"), parameters=decoder),
        vocabulary_size=len(captioner.vocabulary), device=str(captioner.device), backend=captioner.backend, metrics=request.app.state.model_metrics,
        confidence_bands=[schemas.ConfidenceBand(level=b.level, minimum=b.minimum) for b in captioner.calibration.bands] if captioner.calibration else None,
        attention_maps=explainable(captioner),
    )


def explainable(captioner: Captioner) -> bool:
    try:
        check_explainable(captioner.decoder)
    except CaptionerError:
        return False
    return True


@router.get("/api/limits", response_model=schemas.Limits, summary="What uploads and options the server accepts")
async def limits(settings: SettingsDependency) -> schemas.Limits:
    defaults = schemas.CaptionOptions()
    return schemas.Limits(
        max_upload_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels, max_pixels_not_jpeg=settings.max_pixels_not_jpeg,
        beam_size=schemas.Range(minimum=1, maximum=schemas.MAX_BEAM_SIZE, default=defaults.beam_size),
        num_captions=schemas.Range(minimum=1, maximum=schemas.MAX_NUM_CAPTIONS, default=defaults.num_captions),
    )


@router.get("/healthz", response_model=schemas.Health, summary="Liveness, and whether the model is loaded")
async def health(request: Request) -> schemas.Health:
    captioner = getattr(request.app.state, "captioner", None)
    return schemas.Health(status="ok", model_loaded=captioner is not None, model=captioner.name if captioner else None)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})  # SecurityHeaders adds the policy


# ---- errors, all as {"error": {"code", "message"}} ----------------------------------------

def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = schemas.ErrorResponse(error=schemas.ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(422, "invalid_request", str(error.errors()[0].get("msg", "invalid request")) + ".")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error_response(error.status_code, codes.get(error.status_code, "http_error"), str(error.detail), error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)  # never the body
        return _error_response(500, "internal_error", "Something went wrong on the server; please try again.")


# ---- the app ------------------------------------------------------------------------------

def load_captioner(settings: Settings) -> tuple[Captioner, dict]:
    """Load the model and its metrics, and caption a blank image once, so a broken model fails here, not at the first request."""
    try:
        captioner = Captioner.load(settings.model_path, settings.device, settings.backend) if settings.model_path else Captioner.from_pretrained(device=settings.device, backend=settings.backend)
        metrics = captioner.metrics  # read once: a broken metrics.json is refused like any broken model file
        captioner.generate(captioner.encode([Image.new("RGB", (64, 64))]), beam_size=1)
    except CaptionerError as error:
        raise CaptionerError(f"cannot load the model: {error}") from None
    except Exception as error:
        where = settings.model_path or "the shipped default model"
        raise CaptionerError(f"cannot load the model from {where}: {type(error).__name__}: {error}") from None
    return captioner, metrics


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    fix_mmap_threshold()  # before the model loads: big blocks go back to the system when freed
    try:
        app.state.captioner, app.state.model_metrics = load_captioner(settings)
    except CaptionerError as error:
        app.state.startup_error = str(error)  # serve() reports it as one line
        raise
    app.state.inference_queue = InferenceQueue(settings.queue_size, settings.inference_threads)
    app.state.photo_decoder = PhotoDecoder(settings)
    app.state.batcher = caption_batcher(app.state.captioner, app.state.inference_queue, settings)
    logger.info("model %s loaded; queue of %d", app.state.captioner.name, settings.queue_size)
    try:
        yield
    finally:
        app.state.inference_queue.shutdown()
        app.state.photo_decoder.shutdown()
        app.state.captioner = None


class HeadLikeGet:
    """Answer HEAD on every GET route with GET's status and headers and no body (RFC 9110, 9.3.2).

    FastAPI routes declared with GET refuse HEAD with 405, which breaks `curl -I` and uptime probes.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def send_headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


class CaptionerApp(FastAPI):
    """FastAPI with SecurityHeaders outside everything, even the error handler that answers 500s."""

    def build_middleware_stack(self):
        return SecurityHeaders(super().build_middleware_stack())


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app: JSON API under /api, health at /healthz, the page at /, docs at /docs."""
    app = CaptionerApp(
        title=TITLE, version=__version__, lifespan=lifespan, docs_url=None,
        description="Upload a photo, get its caption. Uploads are processed in memory and never stored or logged.",
    )
    app.state.settings = settings = settings or Settings()
    app.state.captioner = None
    app.state.model_metrics = {}
    app.state.startup_error = None
    app.state.upload_memory = UploadMemory(settings.upload_memory_limit)
    app.state.examples = example_photos()
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _install_offline_docs(app)
    _install_error_handlers(app)
    app.add_middleware(HeadLikeGet)
    return app


DOCS_OPENAPI_URL = "/docs/openapi-3.0.json"
# Above Swagger UI, in the same tab (a link in the API's description would open a new one); Swagger's own styles.
BACK_TO_PAGE = b'<body>\n<div class="swagger-ui"><div class="wrapper"><p class="info"><a class="link back-to-page" href="/">&larr; Back to the captioning page</a></p></div></div>'


def _install_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package, not a CDN, so it works offline.

    That package bundles Swagger UI 4, which renders only OpenAPI 3.0: it reads a 3.0 rendering of
    the schema, while /openapi.json stays FastAPI's OpenAPI 3.1 for every other client.
    """
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get(DOCS_OPENAPI_URL, include_in_schema=False)
    def docs_schema() -> JSONResponse:
        return JSONResponse(openapi_3_0(app.openapi()))

    @app.get("/docs", include_in_schema=False)
    def docs():
        page = get_swagger_ui_html(
            openapi_url=DOCS_OPENAPI_URL, title=f"{TITLE} {__version__} \u2014 JSON API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg" if (STATIC / "favicon.svg").is_file() else "/docs-assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )
        page = HTMLResponse(page.body.replace(b"<body>", BACK_TO_PAGE, 1))
        page.headers["Content-Security-Policy"] = inline_script_policy(page.body)  # Swagger UI starts from an inline script
        return page


def openapi_3_0(document: dict) -> dict:
    """A copy of an OpenAPI 3.1 document in OpenAPI 3.0 terms, for Swagger UI 4.

    Only what 3.1 changed in schemas and FastAPI emits: `null` in anyOf/oneOf becomes `nullable`,
    `const` a one-value enum, an `examples` list `example`, numeric exclusive bounds the boolean form.
    """
    return {**_as_3_0(document), "openapi": "3.0.3"}


def _as_3_0(node):
    if isinstance(node, list):
        return [_as_3_0(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _as_3_0(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            del node[key]
            node["nullable"] = True
            if len(rest) == 1 and "$ref" not in rest[0]:
                node.update(rest[0])
            else:  # 3.0 ignores the siblings of a $ref, so wrap it
                node["allOf" if len(rest) == 1 else key] = rest
    if "const" in node and not isinstance(node["const"], dict):  # not a property named "const"
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("examples"), list) and node["examples"]:  # a schema's; 3.0's own examples are a map
        node["example"] = node.pop("examples")[0]
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(exclusive), (int, float)) and not isinstance(node[exclusive], bool):
            node[inclusive], node[exclusive] = node[exclusive], True
    return node
