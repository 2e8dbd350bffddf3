"""Work on batches one ahead: the next batch is started (in a thread pool) before this one is handed
to the caller, so decoding photos overlaps encoding and captioning them."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

Batch, Pending, Result = TypeVar("Batch"), TypeVar("Pending"), TypeVar("Result")


def one_ahead(batches: Sequence[Batch], start: Callable[[Batch], Pending], finish: Callable[[Pending], Result]) -> Iterator[Result]:
    """finish(start(batch)) for each batch in order; `start` submits the work (returns futures) and
    `finish` waits for it, and batch k + 1 is started before batch k is finished."""
    pending = start(batches[0]) if batches else None
    for number in range(len(batches)):
        current = pending
        if number + 1 < len(batches):
            pending = start(batches[number + 1])
        yield finish(current)
