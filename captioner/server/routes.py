"""The JSON API's routes and the page's, on one `APIRouter`, with the dependencies that reach what
the app's lifespan set up (the model, the queue, the upload and decode budgets).
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from PIL import Image

from ..api import Captioner
from ..errors import CaptionerError
from ..generation.alt_text import tags_alt_text
from ..generation.caption_style import written
from ..generation.explain import check_explainable
from . import schemas
from .errors import ApiError
from .inference import InferenceQueue
from .photo_decoding import PhotoDecoder
from .settings import MULTIPART_OVERHEAD, STATIC, Settings
from .uploads import UploadMemory, discard_body, read_caption_form

T = TypeVar("T")


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
            data, options = await read_caption_form(request, settings, hold, default_beam(captioner))
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
    decoder = captioner.config.decoder.to_dict()
    return schemas.ModelInfo(
        name=captioner.name, encoder=captioner.config.encoder,
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


def default_beam(captioner: Captioner) -> int:
    """The beam of a request that sends none: the model's own, within the server's limit."""
    return min(captioner.default_beam_size, schemas.MAX_BEAM_SIZE)


@router.get("/api/limits", response_model=schemas.Limits, summary="What uploads and options the server accepts", responses=_errors(503))
async def limits(settings: SettingsDependency, captioner: CaptionerDependency) -> schemas.Limits:
    defaults = schemas.CaptionOptions()
    return schemas.Limits(
        max_upload_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels, max_pixels_not_jpeg=settings.max_pixels_not_jpeg,
        beam_size=schemas.Range(minimum=1, maximum=schemas.MAX_BEAM_SIZE, default=default_beam(captioner)),
        num_captions=schemas.Range(minimum=1, maximum=schemas.MAX_NUM_CAPTIONS, default=defaults.num_captions),
    )


@router.get("/healthz", response_model=schemas.Health, summary="Liveness, and whether the model is loaded")
async def health(request: Request) -> schemas.Health:
    captioner = getattr(request.app.state, "captioner", None)
    return schemas.Health(status="ok", model_loaded=captioner is not None, model=captioner.name if captioner else None)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})  # SecurityHeaders adds the policy
