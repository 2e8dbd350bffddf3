"""Photos decoded for the feature cache, batch by batch: by DataLoader worker processes (on a GPU)
or by one thread beside the encoder (on the CPU), through the same `load_image` and `preprocess`
as every other command. A photo that cannot be read is reported with its row, never fatal."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError
from ..model.encoders import PreprocessConfig, preprocess
from .images import load_image
from .read_ahead import one_ahead

# Decoding photos: batches of (rows (B,), pixels (B, 3, S, S), [(row, why unreadable)]).
DecodedBatch = tuple[np.ndarray, torch.Tensor, list[tuple[int, str]]]


def _pixels(path: Path, config: PreprocessConfig, flip: bool) -> torch.Tensor:
    """A photo file -> the encoder's input (3, S, S), mirrored with `flip`."""
    image = load_image(path)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return preprocess(image, config)


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> DecodedBatch:
    decoded = [(row, pixels) for row, pixels, _ in items if pixels is not None]
    rows = np.array([row for row, _ in decoded], dtype=np.int64)
    pixels = torch.stack([pixels for _, pixels in decoded]) if decoded else torch.empty(0)
    return rows, pixels, [(row, why) for row, pixels, why in items if pixels is None]


class PhotoRows(torch.utils.data.Dataset):
    """The photos of some cache rows, decoded and preprocessed (in DataLoader worker processes)."""

    def __init__(self, paths: list[Path], rows: np.ndarray, config: PreprocessConfig, flip: bool):
        self.paths, self.rows, self.config, self.flip = paths, rows, config, flip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        row = int(self.rows[index])
        try:
            return row, _pixels(self.paths[row], self.config, self.flip), ""
        except ImageError as error:
            return row, None, str(error)


def loader_batches(paths, todo: np.ndarray, batch_size: int, config: PreprocessConfig, flip: bool, workers: int, pin: bool) -> Iterator[DecodedBatch]:
    """Batches decoded by `workers` processes (none: in this process), pinned for a fast copy to the GPU."""
    loader = torch.utils.data.DataLoader(
        PhotoRows(paths, todo, config, flip), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, pin_memory=pin, prefetch_factor=4 if workers else None,
    )
    yield from loader


def threaded_batches(paths, todo: np.ndarray, batch_size: int, config: PreprocessConfig, flip: bool) -> Iterator[DecodedBatch]:
    """Batches decoded by one thread, the next while the caller encodes this one."""
    dataset = PhotoRows(paths, todo, config, flip)

    def decode(first: int) -> DecodedBatch:
        return _collate([dataset[index] for index in range(first, min(first + batch_size, len(todo)))])

    with ThreadPoolExecutor(max_workers=1) as pool:
        yield from one_ahead(range(0, len(todo), batch_size), lambda first: pool.submit(decode, first), lambda future: future.result())
