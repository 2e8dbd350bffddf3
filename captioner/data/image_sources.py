"""Where a photo comes from, for the Python API and the CLI: everything `images.load_image` reads
(paths, bytes, PIL images, arrays), plus binary file objects and http(s) URLs.

A URL is downloaded with urllib under a deadline, a size limit and a bounded number of redirects;
each way it can fail is one line naming the URL. Only the API and the CLI fetch URLs, for the
person running them: the server never fetches what a client sends (it reads uploaded bytes only),
and datasets and training read local files only, so `load_image` itself knows nothing of URLs.
"""
from __future__ import annotations

import io
import os
import socket
import time
import urllib.error
import urllib.request
from typing import IO, Union

import numpy as np
from PIL import Image

from ..errors import ImageError
from .images import ImageInput, load_image

ImageSource = Union[ImageInput, IO[bytes]]  # and a str that is an http(s) URL

URL_SCHEMES = ("http://", "https://")
URL_TIMEOUT = 20.0  # seconds for the whole download
URL_MAX_BYTES = 20 * 1024 * 1024
URL_MAX_REDIRECTS = 5
CHUNK = 64 * 1024
NOT_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "application/javascript")
USER_AGENT = "captioner (+https://pypi.org/project/captioner/)"


def is_url(source: object) -> bool:
    """Whether `source` is an http(s) URL (a str; a Path never is one)."""
    return isinstance(source, str) and source[:8].lower().startswith(URL_SCHEMES)


def is_file_object(source: object) -> bool:
    """An open binary file or stream: anything with `read` that is not itself an image."""
    return callable(getattr(source, "read", None)) and not isinstance(source, (Image.Image, np.ndarray, bytes, bytearray, str, os.PathLike))


def is_one_image(source: object) -> bool:
    """Whether `source` is one photo (as opposed to a list or other iterable of photos)."""
    return isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)) or is_file_object(source)


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most `max_redirections` redirects, to http(s) only (never file:// or ftp://)."""

    def __init__(self, max_redirects: int):
        self.max_redirections = max_redirects
        self.max_repeats = max_redirects  # the same URL again counts like any other redirect

    def redirect_request(self, request, fp, code, message, headers, new_url):
        if not is_url(new_url):
            raise ImageError(f"{request.full_url}: redirects to {new_url[:200]!r}, which is not an http(s) URL")
        return super().redirect_request(request, fp, code, message, headers, new_url)


def fetch_url(url: str, timeout: float = URL_TIMEOUT, max_bytes: int = URL_MAX_BYTES, max_redirects: int = URL_MAX_REDIRECTS) -> bytes:
    """The body of an http(s) URL; ImageError, in one line, when it is too slow, too large, loops
    in redirects, is not found or is not an image."""
    if not is_url(url):
        raise ImageError(f"{url[:200]}: not an http(s) URL")
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_LimitedRedirects(max_redirects))
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    try:
        with opener.open(request, timeout=timeout) as response:
            kind = response.headers.get_content_type()
            if kind.startswith(NOT_IMAGE_TYPES):
                raise ImageError(f"{url}: not an image (the server sent {kind}); pass the address of the image itself")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(url, max_bytes)
            return _read_body(response, url, max_bytes, deadline, timeout)
    except ImageError:
        raise
    except urllib.error.HTTPError as error:
        if 300 <= error.code < 400:
            raise ImageError(f"{url}: more than {max_redirects} redirects (a redirect loop?); pass the image's final address") from None
        raise ImageError(f"{url}: the server answered {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, (socket.timeout, TimeoutError)):
            raise _timed_out(url, timeout) from None
        raise ImageError(f"{url}: cannot download it ({error.reason})") from None
    except (socket.timeout, TimeoutError):
        raise _timed_out(url, timeout) from None
    except (OSError, ValueError) as error:  # a dropped connection, a malformed response or URL
        raise ImageError(f"{url}: cannot download it ({error})") from None


def _read_body(response, url: str, max_bytes: int, deadline: float, timeout: float) -> bytes:
    """Read in chunks, so the size limit and the deadline hold however the server sends the body."""
    body = bytearray()
    while chunk := response.read(CHUNK):
        body.extend(chunk)
        if len(body) > max_bytes:
            raise _too_large(url, max_bytes)
        if time.monotonic() > deadline:
            raise _timed_out(url, timeout)
    return bytes(body)


def _too_large(url: str, max_bytes: int) -> ImageError:
    return ImageError(f"{url}: larger than the {max_bytes / 2**20:g} MiB download limit; download it yourself and pass the file")


def _timed_out(url: str, timeout: float) -> ImageError:
    return ImageError(f"{url}: no answer within {timeout:g} s; check the address or your connection, or download it yourself")


def read_image(source: ImageSource, name: str | None = None, timeout: float = URL_TIMEOUT, max_bytes: int = URL_MAX_BYTES) -> Image.Image:
    """Any photo source -> an upright RGB PIL image (`load_image`); ImageError in one line when it cannot be read."""
    if is_url(source):
        return load_image(fetch_url(source, timeout, max_bytes), name=name or source)
    if is_file_object(source):
        return load_image(_read_file_object(source), name=name or str(getattr(source, "name", "file object")))
    if isinstance(source, memoryview):
        return load_image(source.tobytes(), name=name)
    return load_image(source, name=name)


def _read_file_object(handle: IO) -> bytes:
    try:
        data = handle.read()
    except (OSError, ValueError) as error:  # a closed file, a file opened for writing only
        raise ImageError(f"cannot read the file object ({error}); pass a file opened with open(path, 'rb')") from None
    if isinstance(data, str) or isinstance(handle, io.TextIOBase):
        raise ImageError("the file object is open in text mode; open the image with open(path, 'rb')")
    return bytes(data)
