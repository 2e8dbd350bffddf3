"""Cached features as decoder input (training, `captioner evaluate`), and whole splits captioned
from the feature cache for training's dev scores each epoch."""
from __future__ import annotations

import numpy as np
import torch

from .decoders import Features
from .decoding import DecodingOptions, beam_search, greedy
from .features import FeatureCache


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


def decode_split(
    decoder, cache: FeatureCache, keys: list[str], device: torch.device, beam_size: int, options: DecodingOptions,
    batch_size: int = 100, concepts=None,
) -> list[list[int]]:
    """Best caption ids per key, with `concepts` (aligned with keys) for models that read them: the
    dev scores of training. `evaluate` captions through `Captioner.generate` instead (`evaluation.caption_split`)."""
    decoder.eval()
    rows = cache.rows(keys)
    results = []
    for start in range(0, len(rows), batch_size):
        features = batch_features(cache, rows[start : start + batch_size], device)
        if concepts is not None:
            index = torch.arange(start, min(start + batch_size, len(rows)))
            features = features._replace(concepts=concepts.index_select(index).to(device))
        if beam_size == 1:
            hypotheses = greedy(decoder, features, options)
        else:
            hypotheses = beam_search(decoder, features, beam_size=beam_size, options=options)
        results.extend(best[0].tokens for best in hypotheses)
    return results
