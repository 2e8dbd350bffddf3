"""Cached features as decoder input: training's batches, and the splits that `captioner evaluate`
and training's dev score caption through `Captioner.generate` (`evaluation.caption_split`)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.features import FeatureCache
from ..model.decoders import Features


def batch_features(cache: FeatureCache, rows: np.ndarray, device: torch.device, flip_cache: FeatureCache | None = None, flip_rows: np.ndarray | None = None) -> Features:
    """Features of `cache` rows (B,) on `device`. Where `flip_rows` (B,) is >= 0, that row of
    `flip_cache` (the mirrored photo) is read instead: each row is read from the one copy it uses."""
    grid = np.empty((len(rows), *cache.grid.shape[1:]), dtype=np.float16)  # (B, G, C)
    pooled = np.empty((len(rows), cache.pooled.shape[1]), dtype=np.float16)  # (B, C)
    mirrored = flip_rows >= 0 if flip_rows is not None else np.zeros(len(rows), dtype=bool)
    for source, source_rows, positions in ((cache, rows, np.flatnonzero(~mirrored)), (flip_cache, flip_rows, np.flatnonzero(mirrored))):
        if len(positions):
            positions = positions[np.argsort(source_rows[positions])]  # memmap reads are fastest in file order
            grid[positions] = source.grid[source_rows[positions]]
            pooled[positions] = source.pooled[source_rows[positions]]
    return Features(torch.from_numpy(grid).to(device).float(), torch.from_numpy(pooled).to(device).float())
