"""Receiving an upload: the multipart form is streamed into memory chunk by chunk, with the size
limit checked on every chunk (never spooled to disk, never logged), under a per-client read
timeout and a shared memory budget (`UploadMemory`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from . import schemas
from .errors import ApiError
from .settings import MB, MULTIPART_OVERHEAD, Settings

logger = logging.getLogger("captioner.server")

CLOSE = {"Connection": "close"}  # the rest of an unread body cannot be told from the next request
OPTION_FIELD_BYTES = 32
OPTION_FIELDS = tuple(schemas.CaptionOptions.model_fields)  # beam_size, num_captions, style, neutral


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


async def read_caption_form(request: Request, settings: Settings, hold: Callable[[int], None], default_beam: int) -> tuple[bytes, schemas.CaptionOptions]:
    """Stream the body into memory, refusing it as soon as it passes the limit; `hold` charges each
    chunk. Options not sent are the defaults, `default_beam` the beam size."""
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
        given = {name: value.decode("utf-8", "replace") for name, value in reader.fields.items() if value.strip()}  # an empty field is the default, as in an HTML form
        options = schemas.CaptionOptions.model_validate({"beam_size": default_beam, **given})
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
