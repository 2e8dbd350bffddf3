"""Where captions are computed: loading the model, the bounded `InferenceQueue` whose threads run
inference, and the dynamic batcher that feeds them.

Only a fully received and decoded upload is admitted to the queue, so a stalled client never holds
an inference slot; a full queue answers a quick 503.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from PIL import Image

from ..api import Captioner
from ..errors import CaptionerError
from .batching import CaptionBatcher
from .errors import ApiError
from .settings import Settings

T = TypeVar("T")


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


def caption_batcher(captioner: Captioner, queue: InferenceQueue, settings: Settings) -> CaptionBatcher:
    """Photos arriving within `batch_wait_ms` of each other are encoded and captioned together."""
    return CaptionBatcher(captioner, queue.run, settings.inference_threads, settings.batch_wait_ms / 1000, settings.max_batch, settings.max_beams)


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
