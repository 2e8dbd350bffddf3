"""The web app: `create_app(settings)` builds a FastAPI app serving the JSON API and the page.

The model is loaded once, in the app's lifespan, and reached through the `get_captioner`
dependency. The work of a request lives in modules of its own: `uploads` receives the form,
`photo_decoding` decodes the photo, `inference` captions it, `routes` answers, `errors` renders
failures and `docs` serves the API docs offline.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import CaptionerError
from .docs import install_offline_docs, openapi_3_0
from .errors import ApiError, install_error_handlers
from .examples import example_photos
from .inference import InferenceQueue, caption_batcher, load_captioner
from .malloc import fix_mmap_threshold
from .photo_decoding import DecodeMemory, PhotoDecoder
from .routes import router
from .security_headers import SecurityHeaders
from .settings import MB, MULTIPART_OVERHEAD, STATIC, TITLE, Settings
from .uploads import UploadMemory

# Names that lived here before the app was split into modules, still importable from here.
__all__ = [
    "MB", "MULTIPART_OVERHEAD", "ApiError", "CaptionerApp", "DecodeMemory", "InferenceQueue", "PhotoDecoder", "Settings", "UploadMemory",
    "caption_batcher", "create_app", "lifespan", "load_captioner", "openapi_3_0",
]

logger = logging.getLogger("captioner.server")


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
    install_offline_docs(app)
    install_error_handlers(app)
    app.add_middleware(HeadLikeGet)
    return app
