"""The server's settings: `Settings`, everything a deployment may change, and the fixed values
the server's modules share (MB, the multipart overhead allowed beside an upload, the static folder).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data.images import MAX_PIXELS

MB = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # part headers, boundaries and the option fields around the image
STATIC = Path(__file__).parent / "static"
TITLE = "Captioner"


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
