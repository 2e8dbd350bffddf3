"""The JSON API's request and response models; FastAPI turns them into the OpenAPI docs at /docs."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_BEAM_SIZE = 10
MAX_NUM_CAPTIONS = 5


class CaptionOptions(BaseModel):
    """Decoding options sent as form fields beside the `image` file."""

    model_config = ConfigDict(extra="forbid")

    beam_size: int = Field(3, ge=1, le=MAX_BEAM_SIZE, description="Beams searched; 1 is greedy decoding.")
    num_captions: int = Field(1, ge=1, le=MAX_NUM_CAPTIONS, description="Captions returned, best first; at most `beam_size`.")
    style: Literal["sentence", "plain"] = Field("sentence", description="`sentence`: \"A cat sitting on a bed.\" (ready for alt text); `plain`: the model's words, \"a cat sitting on a bed\".")
    neutral: bool = Field(False, description="Person words without gender: \"a person\", \"a child\", \"people\".")

    @model_validator(mode="after")
    def _captions_fit_in_beam(self) -> "CaptionOptions":
        if self.num_captions > self.beam_size:
            raise ValueError(f"num_captions ({self.num_captions}) must not exceed beam_size ({self.beam_size}); raise beam_size")
        return self


class CaptionForm(CaptionOptions):
    """The multipart/form-data body of `POST /api/captions` (documentation only: the server streams it)."""

    image: bytes = Field(description="The photo: JPEG, PNG, WebP, GIF, BMP or TIFF.", json_schema_extra={"format": "binary"})


class Caption(BaseModel):
    text: str = Field(description="In the requested `style`: a sentence (\"A cat sitting on a bed.\") unless `plain` was asked for.")
    score: float = Field(description="Length-normalised log-probability; higher is better.")


class Tag(BaseModel):
    """A visual concept of the photo: an everyday word and its probability."""

    word: str = Field(description="An everyday word or short phrase, e.g. `cat` or `oil rig`.")
    score: float = Field(ge=0, le=1, description="Probability that the photo shows it, 0 to 1.")


class ImageSize(BaseModel):
    width: int = Field(description="Pixels, after EXIF rotation.")
    height: int


class Timings(BaseModel):
    """Milliseconds spent in each step; `total` also covers reading the upload and waiting in the queue."""

    decode: float
    encode: float
    generate: float
    total: float


class CaptionResponse(BaseModel):
    captions: list[Caption] = Field(description="Best first.")
    tags: list[Tag] = Field(description="The photo's visual concepts, most probable first; may be empty.")
    model: str
    image: ImageSize
    timing_ms: Timings


class DecoderInfo(BaseModel):
    kind: str = Field(description="lstm, attention or transformer.")
    parameters: dict[str, int | float | str | None] = Field(description="The decoder's shape: sizes, layers, heads.")


class ModelInfo(BaseModel):
    name: str
    encoder: str
    decoder: DecoderInfo
    vocabulary_size: int
    device: str = Field(description="Where the model runs: cpu, or cuda:N.")
    backend: str = Field(description="What runs it: pytorch, or onnxruntime.")
    metrics: dict = Field(description="Test-split scores from the model's metrics.json; empty if it was never evaluated.")


class Health(BaseModel):
    status: str = Field(description="Always `ok` while the process answers.")
    model_loaded: bool
    model: str | None = None


class Range(BaseModel):
    minimum: int
    maximum: int
    default: int


class Limits(BaseModel):
    """What the server accepts, so a client (the page) can check before uploading."""

    max_upload_bytes: int
    max_pixels: int
    max_pixels_not_jpeg: int = Field(description="The lower pixel limit of PNG, WebP, GIF, BMP and TIFF.")
    beam_size: Range
    num_captions: Range


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: upload_too_large, unsupported_image, invalid_image, ...")
    message: str = Field(description="One sentence for a person: what went wrong and what to do.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
