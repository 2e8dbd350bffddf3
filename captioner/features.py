"""A feature cache: the frozen encoder runs once per image, decoders train on the stored features.

Layout of a cache folder (one per encoder and dataset):
    index.json       encoder name, grid shape, and the image keys in row order
    grid.f16         float16 memmap (N, G, C): the spatial grid per image
    pooled.f16       float16 memmap (N, C): the mean-pooled vector per image
    done.u8          one byte per row, set once that row is written: an interrupted run resumes
With `flip=True` rows hold features of the mirrored photo (a cheap training augmentation).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .datasets import CaptionDataset
from .encoders import ImageEncoder, create_encoder
from .errors import CaptionerError, ImageError
from .images import load_image


class FeatureCache:
    """Memory-mapped float16 features keyed by image name."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_file = self.folder / "index.json"
        if not index_file.is_file():
            raise CaptionerError(f"{self.folder}: no feature cache here; run 'captioner features' first")
        self.index = json.loads(index_file.read_text())
        self.keys: list[str] = self.index["keys"]
        self.row_of = {key: row for row, key in enumerate(self.keys)}
        count, grid_size, dim = len(self.keys), self.index["grid_size"], self.index["feature_dim"]
        self.grid = np.memmap(self.folder / "grid.f16", dtype=np.float16, mode="r", shape=(count, grid_size, dim))
        self.pooled = np.memmap(self.folder / "pooled.f16", dtype=np.float16, mode="r", shape=(count, dim))
        self.done = np.fromfile(self.folder / "done.u8", dtype=np.uint8)

    @property
    def encoder_name(self) -> str:
        return self.index["encoder"]

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def rows(self, keys: list[str]) -> np.ndarray:
        missing = [key for key in keys if key not in self.row_of]
        if missing:
            raise CaptionerError(f"{self.folder}: {len(missing)} images are not in the feature cache (e.g. {missing[0]}); rebuild it")
        return np.array([self.row_of[key] for key in keys], dtype=np.int64)

    def load(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Read features into memory: grid (N, G, C) and pooled (N, C), float16."""
        rows = self.rows(keys)
        not_done = rows[self.done[rows] == 0]
        if len(not_done):
            raise CaptionerError(f"{self.folder}: {len(not_done)} images have no features yet; rerun 'captioner features' to finish")
        return torch.from_numpy(np.ascontiguousarray(self.grid[rows])), torch.from_numpy(np.ascontiguousarray(self.pooled[rows]))

    @classmethod
    def build(
        cls,
        folder: str | Path,
        encoder: ImageEncoder,
        keys: list[str],
        paths: list[Path],
        batch_size: int = 4,
        flip: bool = False,
        progress: bool = True,
        rows: list[int] | None = None,
    ) -> "FeatureCache":
        """Encode every image (or only `rows`) not yet done, resuming an interrupted run."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index_file = folder / "index.json"
        index = {"encoder": encoder.name, "grid_size": encoder.grid_size**2, "feature_dim": encoder.feature_dim, "flip": flip, "keys": keys}
        count, grid_size, dim = len(keys), index["grid_size"], index["feature_dim"]
        if index_file.is_file():
            existing = json.loads(index_file.read_text())
            if existing != index:
                raise CaptionerError(f"{folder}: holds a feature cache for other images or another encoder; choose another --cache folder")
        else:
            for name, shape in (("grid.f16", (count, grid_size, dim)), ("pooled.f16", (count, dim))):
                np.memmap(folder / name, dtype=np.float16, mode="w+", shape=shape).flush()
            np.zeros(count, dtype=np.uint8).tofile(folder / "done.u8")
            tmp = index_file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(index))
            os.replace(tmp, index_file)
        grid = np.memmap(folder / "grid.f16", dtype=np.float16, mode="r+", shape=(count, grid_size, dim))
        pooled = np.memmap(folder / "pooled.f16", dtype=np.float16, mode="r+", shape=(count, dim))
        done = np.memmap(folder / "done.u8", dtype=np.uint8, mode="r+", shape=(count,))
        wanted = np.zeros(count, dtype=bool)
        wanted[rows if rows is not None else slice(None)] = True
        todo = np.flatnonzero((done == 0) & wanted)
        total = int(wanted.sum())

        def prepare(row: int) -> torch.Tensor:
            image = load_image(paths[row])
            if flip:
                image = image.transpose(0)  # PIL.Image.FLIP_LEFT_RIGHT
            return encoder.preprocess(image)

        batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
        bar = tqdm(total=total, initial=total - len(todo), unit="img", desc=f"features {encoder.name}", disable=not progress)
        # Decoding the next batch overlaps with encoding this one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(lambda b: torch.stack([prepare(int(r)) for r in b]), batches[0]) if batches else None
            for number, batch in enumerate(batches):
                try:
                    images = pending.result()
                except ImageError as error:
                    raise CaptionerError(f"cannot build the feature cache: {error}") from None
                if number + 1 < len(batches):
                    pending = pool.submit(lambda b: torch.stack([prepare(int(r)) for r in b]), batches[number + 1])
                batch_grid, batch_pooled = encoder(images)  # (B, G, C), (B, C)
                grid[batch] = batch_grid.to(torch.float16).numpy()
                pooled[batch] = batch_pooled.to(torch.float16).numpy()
                done[batch] = 1
                if number % 50 == 0:
                    for array in (grid, pooled, done):
                        array.flush()
                bar.update(len(batch))
        for array in (grid, pooled, done):
            array.flush()
        bar.close()
        return cls(folder)


def feature_cache(dataset: CaptionDataset, encoder_name: str, cache_root: str | Path, images: list[str], flip: bool = False, encoder=None, progress: bool = True) -> FeatureCache:
    """The dataset's feature cache for one encoder (one folder per dataset), filled for `images`."""
    keys = [record.image for record in dataset.records]
    digest = hashlib.sha1("\n".join(keys).encode()).hexdigest()[:10]
    folder = Path(cache_root) / f"{dataset.name}-{encoder_name}-{digest}{'-flip' if flip else ''}"
    wanted = set(images)
    rows = [row for row, key in enumerate(keys) if key in wanted]
    if (folder / "index.json").is_file():
        cache = FeatureCache(folder)
        if cache.done[rows].all():
            return cache
    encoder = encoder or create_encoder(encoder_name)
    paths = [dataset.image_path(record) for record in dataset.records]
    missing = [str(paths[row]) for row in rows[:50] if not paths[row].is_file()]
    if missing:
        raise CaptionerError(f"image {missing[0]} not found; pass the folder holding the photos with --images")
    return FeatureCache.build(folder, encoder, keys, paths, flip=flip, rows=rows, progress=progress)
