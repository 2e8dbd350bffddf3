"""The web app and JSON API: `captioner serve`, or `create_app(Settings(...))` for any ASGI server."""
from __future__ import annotations

from pydantic import ValidationError

from ..devices import resolve_device
from ..errors import CaptionerError
from .app import MB, Settings, create_app
from .connections import uvicorn_config
from .listening import check_can_listen, port_in_use

__all__ = ["Settings", "create_app", "serve"]


def serve(host: str = "127.0.0.1", port: int = 5000, model: str | None = None, max_upload_mb: float = 10.0, device: str | None = None, backend: str | None = None) -> None:
    """Run the app under uvicorn until interrupted; raise CaptionerError if it cannot start."""
    import uvicorn

    try:
        settings = Settings(model_path=model, max_upload_bytes=int(max_upload_mb * MB), device=device, backend=backend)
    except ValidationError:
        raise CaptionerError(f"--max-upload-mb must be a positive number, got {max_upload_mb}") from None
    resolve_device(settings.device)  # a missing GPU is refused in one line before uvicorn starts
    check_can_listen(host, port)  # before the model loads
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(
        _quiet_startup_failure(app), host, port, settings.header_timeout, settings.max_connections, lifespan="on", timeout_graceful_shutdown=5,
    ))
    try:
        server.run()
    except SystemExit:  # uvicorn exits by itself when start-up fails; say why below instead
        pass
    if not server.started:
        if app.state.startup_error:
            raise CaptionerError(app.state.startup_error)
        raise port_in_use(host, port)  # taken since check_can_listen


def _quiet_startup_failure(app):
    """Uvicorn logs a failed start-up's whole traceback; for a CaptionerError, serve() prints its one line instead."""

    async def wrapped(scope, receive, send):
        async def send_quietly(message):
            if message["type"] == "lifespan.startup.failed" and app.state.startup_error:
                message = {**message, "message": ""}
            await send(message)

        await app(scope, receive, send_quietly if scope["type"] == "lifespan" else send)

    return wrapped
