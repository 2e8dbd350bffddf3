"""The JSON API's request and response models; FastAPI turns them into the OpenAPI docs at /docs."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_BEAM_SIZE = 10  # fewer than the CLI and the Python API allow (config_checks.MAX_BEAM): bounds the server's memory
MAX_NUM_CAPTIONS = 5


class CaptionOptions(BaseModel):
    """Decoding options sent as form fields beside the `image` file."""

    model_config = ConfigDict(extra="forbid")

    beam_size: int | None = Field(None, ge=1, le=MAX_BEAM_SIZE, description="Beams searched; 1 is greedy decoding. Default: the model's own (`GET /api/limits`).")
    num_captions: int = Field(1, ge=1, le=MAX_NUM_CAPTIONS, description="Captions returned, best first; at most `beam_size`.")
    style: Literal["sentence", "plain"] = Field("sentence", description="`sentence`: \"A cat sitting on a bed.\" (ready for alt text); `plain`: the model's words, \"a cat sitting on a bed\".")
    neutral: bool = Field(False, description="Person words without gender: \"a person\", \"a child\", \"people\".")

    @model_validator(mode="after")
    def _captions_fit_in_beam(self) -> "CaptionOptions":
        if self.beam_size is not None and self.num_captions > self.beam_size:
            raise ValueError(f"num_captions ({self.num_captions}) must not exceed beam_size ({self.beam_size}); raise beam_size")
        return self


class CaptionForm(CaptionOptions):
    """The multipart/form-data body of `POST /api/captions` (documentation only: the server streams it)."""

    image: bytes = Field(description="The photo: JPEG, PNG, WebP, GIF, BMP or TIFF.", json_schema_extra={"format": "binary"})


class Caption(BaseModel):
    text: str = Field(description="In the requested `style`: a sentence (\"A cat sitting on a bed.\") unless `plain` was asked for.")
    score: float = Field(description="Length-normalised log-probability; higher is better.")
    confidence: float | None = Field(
        None, ge=0, le=1,
        description="Probability, 0 to 1, that the caption is acceptable alt text (names the photo's subject and says nothing false), "
        "calibrated on labelled dev photos; null when the model folder has no calibration.json.",
    )


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
    tags_alt_text: str | None = Field(
        None, description="Alt text made from the tags that name things, e.g. `Photo of a cup and coffee.`: the fallback where the caption is a guess; null without such tags.",
    )
    model: str
    image: ImageSize
    timing_ms: Timings


class DecoderInfo(BaseModel):
    kind: str = Field(description="lstm, attention or transformer.")
    parameters: dict[str, int | float | str | None] = Field(description="The decoder's shape: sizes, layers, heads.")


class ConfidenceBand(BaseModel):
    """Captions with a confidence from `minimum` up to the next band's minimum are put in one set of words."""

    level: str = Field(description="fairly-sure, somewhat-sure, unsure or guess.")
    minimum: float = Field(ge=0, le=1)


class ModelInfo(BaseModel):
    name: str
    encoder: str
    decoder: DecoderInfo
    vocabulary_size: int
    device: str = Field(description="Where the model runs: cpu, or cuda:N.")
    backend: str = Field(description="What runs it: pytorch, or onnxruntime.")
    metrics: dict = Field(description="Test-split scores from the model's metrics.json; empty if it was never evaluated.")
    confidence_bands: list[ConfidenceBand] | None = Field(
        None, description="From the model's calibration.json, surest first; a caption below the last but one band's minimum is a guess. Null: captions come without a confidence.",
    )
    attention_maps: bool = Field(False, description="Whether `POST /api/explain` can show where each word looked (attention and transformer decoders on pytorch).")


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


class WordMap(BaseModel):
    word: str
    map: list[list[float]] = Field(description="Rows x columns over the photo (the encoder's grid), top row first; sums to 1.")
    grid_share: float = Field(ge=0, le=1, description="Share of the word's attention that went to the photo's grid at all (the rest to the whole-photo vector or concept tokens).")


class GridSize(BaseModel):
    rows: int
    columns: int


class ExplainResponse(BaseModel):
    """The best caption and, per word, where the model looked when it wrote it."""

    caption: str
    words: list[WordMap] = Field(description="One per word of the decoder, in order.")
    grid: GridSize
    model: str
    image: ImageSize


class ExamplePhoto(BaseModel):
    name: str
    url: str
