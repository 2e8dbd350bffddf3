"""Dynamic batching, as TorchServe and Triton do it: photos whose requests arrive close together
are encoded and captioned as one batch, which costs little more than one photo on a CPU.

A photo waits at most `wait` seconds for others (or until `max_batch` are waiting); with no wait
(the default) an idle server starts at once. While every inference thread is busy, new photos
gather and go together as soon as one is free: under load, batches form by themselves. Photos with
different options (beam size, number of captions) go in different batches, and a batch holds at
most `max_beams` photos x beam width (beam 3: 8 photos, beam 10: 2), which bounds inference memory. A batch that fails is
captioned again photo by photo, so a fault in one photo answers only that photo with an error.
Everything here runs on the event loop except `_caption_batch`, which runs on the inference threads.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, NamedTuple

from PIL import Image

from ..api import Caption, Captioner
from .malloc import trim

logger = logging.getLogger("captioner.server")


class Job(NamedTuple):
    image: Image.Image
    options: tuple[int, int]  # (beam size, number of captions)
    answer: asyncio.Future


class CaptionBatcher:
    """`await caption(image, beam_size, num_captions)` -> (captions, timings in ms), batched with its neighbours."""

    def __init__(self, captioner: Captioner, run: Callable, threads: int, wait: float = 0.005, max_batch: int = 8, max_beams: int = 24):
        self.captioner, self.run, self.threads = captioner, run, threads
        self.wait, self.max_batch, self.max_beams = wait, max_batch, max_beams
        self.waiting: list[Job] = []
        self.running = 0  # batches on the inference threads
        self.timer: asyncio.TimerHandle | None = None
        self.batch_sizes: list[int] = []  # for tests and benchmarks: the size of every batch run

    async def caption(self, image: Image.Image, beam_size: int, num_captions: int) -> tuple[list[Caption], dict[str, float]]:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append(Job(image, (beam_size, num_captions), answer))
        if len(self.waiting) >= self.max_batch or (self.wait == 0 and self.running < self.threads):
            self._dispatch()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.wait, self._dispatch)
        return await answer

    def _dispatch(self) -> None:
        """Start batches of waiting photos while a thread is free (the rest wait for one)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.waiting and self.running < self.threads:
            options = self.waiting[0].options
            size = max(1, min(self.max_batch, self.max_beams // options[0]))
            batch = [job for job in self.waiting if job.options == options][:size]
            taken = {id(job) for job in batch}
            self.waiting = [job for job in self.waiting if id(job) not in taken]
            self.running += 1
            self.batch_sizes.append(len(batch))
            asyncio.ensure_future(self._run_batch(batch))

    async def _run_batch(self, batch: list[Job]) -> None:
        try:
            await self._answer(batch)
        except Exception as error:
            waiting = [job for job in batch if not job.answer.done()]  # a client that left needs no retry
            if len(batch) == 1:
                for job in waiting:
                    job.answer.set_exception(error)
                return
            # One photo's fault must not fail its neighbours: caption each alone, so only that one gets an error.
            logger.warning("a batch of %d photos failed (%s); captioning them one by one", len(batch), type(error).__name__)
            for job in waiting:
                try:
                    await self._answer([job])
                except Exception as alone:
                    if not job.answer.done():
                        job.answer.set_exception(alone)
        finally:
            self.running -= 1
            if self.waiting:  # they have waited at least as long as a batch took
                self._dispatch()

    async def _answer(self, batch: list[Job]) -> None:
        """Caption the batch on an inference thread and give each job its captions."""
        results, timings = await self.run(self._caption_batch, [job.image for job in batch], *batch[0].options)
        for job, captions in zip(batch, results):
            if not job.answer.done():
                job.answer.set_result((captions, timings))

    def _caption_batch(self, images: list[Image.Image], beam_size: int, num_captions: int) -> tuple[list[list[Caption]], dict[str, float]]:
        started = time.perf_counter()
        features = self.captioner.encode(images)
        encoded = time.perf_counter()
        results = self.captioner.generate(features, beam_size=beam_size, num_captions=num_captions)
        generated = time.perf_counter()
        trim()  # a beam-10 batch frees tens of MiB the next photo's decode can then use
        return results, {"encode": round((encoded - started) * 1000, 1), "generate": round((generated - encoded) * 1000, 1)}
