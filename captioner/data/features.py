"""A feature cache: the frozen encoder runs once per image, decoders train on the stored features.

A cache folder holds one dataset's images as one encoder with one preprocessing made them; its
name says which (`DATASET-ENCODER-IMAGES-PRODUCER[-flip]`, the last two parts digests), so a
cache made by another encoder, preprocessing, cache format or flip setting is never reused: a new
one is built beside it, and the old folder is reported, never deleted.

    index.json       what made it (format version, encoder, preprocessing, flip), the grid shape,
                     and the image keys in row order
    grid.f16         float16 memmap (N, G, C): the spatial grid per image
    pooled.f16       float16 memmap (N, C): the mean-pooled vector per image
    done.u8          one byte per row: 0 to do, 1 written, 2 the photo could not be read (skipped;
                     a resumed run does not try it again, `retry_unreadable` does)
    unreadable.txt   the photos that could not be read, `image<TAB>why` a line

A cache whose files do not hold what its index says (a broken index, a truncated or missing
array) is damaged: `feature_cache` moves it aside, never deleting it, to `FOLDER.damaged-TIME`,
says so in one line and builds it again; opened directly, it is refused in one line.

With `flip=True` rows hold features of the mirrored photo (a training augmentation), and only the
train split's images have rows.

Photos are decoded beside the encoder: on the CPU one thread decodes the next batch while ONNX
Runtime encodes this one (DataLoader worker processes measured 0.54-0.78x as fast on 2 cores, where
the encoder, not decoding, sets the pace; `workers` asks for them); on a GPU the PyTorch encoder runs
there, fed by a DataLoader whose worker processes decode into pinned memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..atomic_files import atomic_write_bytes
from ..devices import resolve_device
from ..errors import CaptionerError
from ..json_files import read_json
from ..model.encoders import ImageEncoder, PreprocessConfig, create_encoder
from .datasets import CaptionDataset
from .photo_batches import loader_batches, threaded_batches

FORMAT_VERSION = 2  # 2: keyed by producer, flip rows for the train split only, unreadable photos marked
TO_DO, WRITTEN, UNREADABLE = 0, 1, 2  # done.u8 values
UNREADABLE_LIST = "unreadable.txt"
INDEX = "index.json"
DAMAGED = ".damaged-"  # a damaged cache set aside is FOLDER.damaged-TIME
REBUILD = "move the folder aside (or delete it) and run 'captioner features' again to rebuild it"
CPU_BATCH, GPU_BATCH = 4, 64  # photos per encoder call (the CPU encoder keeps its activations in cache at 4)
MAX_GPU_WORKERS = 8


def producer(encoder_name: str, preprocess_config: PreprocessConfig, flip: bool) -> dict:
    """What a cache's features depend on: equal producers give equal features."""
    return {"format": FORMAT_VERSION, "encoder": encoder_name, "preprocess": preprocess_config.to_dict(), "flip": flip}


def _digest(text: str, length: int) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def cache_folder(cache_root: str | Path, dataset_name: str, keys: list[str], made_by: dict) -> Path:
    """The folder of the cache of `keys` made by `made_by` (see `producer`)."""
    images = _digest("\n".join(keys), 10)
    made = _digest(json.dumps(made_by, sort_keys=True), 8)
    return Path(cache_root) / f"{dataset_name}-{made_by['encoder']}-{images}-{made}{'-flip' if made_by['flip'] else ''}"


class DamagedCache(CaptionerError):
    """A cache folder that does not hold what its index says (or whose index is unreadable)."""

    def __init__(self, problem: str, remedy: str = REBUILD):
        super().__init__(f"{problem}; {remedy}")
        self.problem = problem


def read_cache_index(folder: Path) -> dict:
    """A cache folder's index, checked: of this format, with every entry the arrays are laid out by."""
    index = read_json(folder / INDEX, "", DamagedCache)
    if index.get("format") != FORMAT_VERSION:
        raise DamagedCache(f"{folder}: a feature cache of format {index.get('format', 1)!r}, not {FORMAT_VERSION}", "run 'captioner features' (or train) to build a current one beside it")
    keys = index.get("keys")
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise DamagedCache(f"{folder / INDEX}: keys must be the list of image names")
    for name in ("grid_size", "feature_dim"):
        if type(index.get(name)) is not int or index[name] < 1:
            raise DamagedCache(f"{folder / INDEX}: {name} must be a whole number >= 1, not {index.get(name)!r}")
    return index


def _check_arrays(folder: Path, index: dict) -> None:
    """Each array file there, of the size the index gives it."""
    count, grid_size, dim = len(index["keys"]), index["grid_size"], index["feature_dim"]
    for name, size in (("grid.f16", count * grid_size * dim * 2), ("pooled.f16", count * dim * 2), ("done.u8", count)):
        path = folder / name
        if not path.is_file():
            raise DamagedCache(f"{path}: {'not a file' if path.exists() else 'missing'}")
        if path.stat().st_size != size:
            raise DamagedCache(f"{path}: {path.stat().st_size} bytes, not the {size} the index gives it (truncated?)")


class FeatureCache:
    """Memory-mapped float16 features keyed by image name."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / INDEX).exists():
            raise CaptionerError(f"{self.folder}: no feature cache here; run 'captioner features' first")
        self.index = read_cache_index(self.folder)
        _check_arrays(self.folder, self.index)
        self.keys: list[str] = self.index["keys"]
        self.row_of = {key: row for row, key in enumerate(self.keys)}
        count, grid_size, dim = len(self.keys), self.index["grid_size"], self.index["feature_dim"]
        self.grid = np.memmap(self.folder / "grid.f16", dtype=np.float16, mode="r", shape=(count, grid_size, dim))
        self.pooled = np.memmap(self.folder / "pooled.f16", dtype=np.float16, mode="r", shape=(count, dim))
        self.done = np.fromfile(self.folder / "done.u8", dtype=np.uint8)
        if len(self.done) and self.done.max() > UNREADABLE:
            raise DamagedCache(f"{self.folder / 'done.u8'}: holds {int(self.done.max())}, not a row state (0, 1 or 2)")

    @property
    def encoder_name(self) -> str:
        return self.index["encoder"]

    @property
    def producer(self) -> dict:
        return {key: self.index[key] for key in ("format", "encoder", "preprocess", "flip")}

    @property
    def complete(self) -> bool:
        """Every row written or found unreadable."""
        return bool(self.done.all())

    @property
    def unreadable(self) -> list[str]:
        """The images whose photo could not be read (they have no features)."""
        return [self.keys[row] for row in np.flatnonzero(self.done == UNREADABLE)]

    def unreadable_reasons(self) -> dict[str, str]:
        """Image -> why its photo could not be read, as `unreadable.txt` records it."""
        return _read_reasons(self.folder)

    def has_features(self, keys: list[str]) -> list[bool]:
        """Whether each image's features are written (False for unreadable photos and rows still to do)."""
        return [self.row_of.get(key) is not None and self.done[self.row_of[key]] == WRITTEN for key in keys]

    def rows(self, keys: list[str]) -> np.ndarray:
        missing = [key for key in keys if key not in self.row_of]
        if missing:
            raise CaptionerError(f"{self.folder}: {len(missing)} images are not in the feature cache (e.g. {missing[0]}); rebuild it")
        return np.array([self.row_of[key] for key in keys], dtype=np.int64)

    def load(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Read features into memory: grid (N, G, C) and pooled (N, C), float16."""
        rows = self.rows(keys)
        if (self.done[rows] == UNREADABLE).any():
            raise CaptionerError(f"{self.folder}: photos among these that could not be read: {int((self.done[rows] == UNREADABLE).sum())}; leave them out (see {UNREADABLE_LIST})")
        not_done = rows[self.done[rows] == TO_DO]
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
        batch_size: int | None = None,
        flip: bool = False,
        progress: bool = True,
        rows: list[int] | None = None,
        workers: int | None = None,
        retry_unreadable: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> "FeatureCache":
        """Encode every image (or only `rows`) not yet done, resuming an interrupted run, on the
        encoder's device. A photo that cannot be read is skipped, logged and marked (see the module
        docstring); `retry_unreadable` tries such photos again. `workers`: processes decoding
        photos (0: one thread; default 0 on the CPU, up to 8 on a GPU)."""
        folder = Path(folder)
        log = log or _to_stderr
        device = encoder_device(encoder)
        index = {**producer(encoder.name, encoder.preprocess_config, flip), "grid_size": encoder.grid_size**2, "feature_dim": encoder.feature_dim, "keys": keys}
        grid, pooled, done = _arrays_for_writing(folder, index)
        wanted = np.zeros(len(keys), dtype=bool)
        wanted[rows if rows is not None else slice(None)] = True
        reasons = _read_reasons(folder)
        if retry_unreadable:
            done[wanted & (done == UNREADABLE)] = TO_DO
        todo = np.flatnonzero((done == TO_DO) & wanted)
        total = int(wanted.sum())

        if workers is None:
            workers = 0 if device.type == "cpu" else min(MAX_GPU_WORKERS, max(1, _cores() - 1))
        batch_size = batch_size or (CPU_BATCH if device.type == "cpu" else GPU_BATCH)
        if workers > 0:
            batches = loader_batches(paths, todo, batch_size, encoder.preprocess_config, flip, workers, pin=device.type == "cuda")
        else:
            batches = threaded_batches(paths, todo, batch_size, encoder.preprocess_config, flip)

        def save() -> None:
            for array in (grid, pooled, done):
                array.flush()
            _write_reasons(folder, {keys[row]: reasons.get(keys[row], "could not be read") for row in np.flatnonzero(np.asarray(done) == UNREADABLE)})

        bar = tqdm(total=total, initial=total - len(todo), unit="img", desc=f"features {encoder.name}", disable=not progress)
        skipped = 0
        try:
            for number, (batch, pixels, failures) in enumerate(batches):
                for row, why in failures:
                    done[row], reasons[keys[row]] = UNREADABLE, why
                    skipped += 1
                    log(f"skipped unreadable photo {keys[row]}: {why}")
                if len(batch):
                    batch_grid, batch_pooled = encoder(pixels.to(device, non_blocking=True))  # (B, G, C), (B, C)
                    grid[batch] = batch_grid.to(torch.float16).cpu().numpy()
                    pooled[batch] = batch_pooled.to(torch.float16).cpu().numpy()
                    done[batch] = WRITTEN
                if number % 50 == 0 or failures:
                    save()
                bar.update(len(batch) + len(failures))
        finally:
            save()
            bar.close()
        if skipped:
            log(f"unreadable photos skipped: {skipped} (listed in {folder / UNREADABLE_LIST})")
        return cls(folder)


def _arrays_for_writing(folder: Path, index: dict) -> tuple[np.memmap, np.memmap, np.memmap]:
    """The grid, pooled and done arrays of a cache folder, created (index last) where there is none yet."""
    count, grid_size, dim = len(index["keys"]), index["grid_size"], index["feature_dim"]
    index_file = folder / INDEX
    if index_file.exists():
        if not describes(read_cache_index(folder), index):
            raise CaptionerError(f"{folder}: holds a feature cache for other images or made by another encoder, preprocessing or format; choose another --cache folder")
        _check_arrays(folder, index)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for name, shape in (("grid.f16", (count, grid_size, dim)), ("pooled.f16", (count, dim))):
            np.memmap(folder / name, dtype=np.float16, mode="w+", shape=shape).flush()
        np.zeros(count, dtype=np.uint8).tofile(folder / "done.u8")
        atomic_write_bytes(index_file, json.dumps(index).encode("utf-8"))  # last: a folder with an index is a whole cache
    return (
        np.memmap(folder / "grid.f16", dtype=np.float16, mode="r+", shape=(count, grid_size, dim)),
        np.memmap(folder / "pooled.f16", dtype=np.float16, mode="r+", shape=(count, dim)),
        np.memmap(folder / "done.u8", dtype=np.uint8, mode="r+", shape=(count,)),
    )


def feature_cache(
    dataset: CaptionDataset, encoder_name: str, cache_root: str | Path, images: list[str], flip: bool = False, encoder: ImageEncoder | None = None,
    progress: bool = True, device: str | torch.device | None = None, workers: int | None = None, retry_unreadable: bool = False,
    log: Callable[[str], None] | None = None,
) -> FeatureCache:
    """The dataset's feature cache for one encoder, filled for `images` (with `flip`, mirrored
    photos of the train split only). `device`: where the encoder runs (auto: a CUDA GPU when
    present); `encoder` is used when it already runs there, else one is made for that device.
    Unreadable photos are skipped: `FeatureCache.has_features` tells which images have features."""
    log = log or _to_stderr
    device = resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    records = dataset.split("train") if flip else dataset.records
    keys = [record.image for record in records]
    wanted = set(images)
    if flip and not wanted <= set(keys):
        raise ValueError("mirrored features are cached for the train split only")
    rows = [row for row, key in enumerate(keys) if key in wanted]
    if encoder is not None and encoder.name != encoder_name:
        raise ValueError(f"the encoder given is {encoder.name}, not {encoder_name}")
    reference = encoder if encoder is not None else create_encoder(encoder_name)  # cheap: no ONNX export until there is work
    made_by = producer(encoder_name, reference.preprocess_config, flip)
    folder = cache_folder(cache_root, dataset.name, keys, made_by)
    cache = _open_or_set_aside(folder, {**made_by, "grid_size": reference.grid_size**2, "feature_dim": reference.feature_dim, "keys": keys}, log)
    if cache is not None:
        if cache.done[rows].all() and not (retry_unreadable and (cache.done[rows] == UNREADABLE).any()):
            return cache
    else:
        for other in stale_caches(cache_root, dataset.name, encoder_name, keys, made_by):
            log(f"feature cache {other} was made {_difference(_read_index(other), made_by)}; not reused: building {folder.name} beside it (delete {other} to free its space)")
    paths = [dataset.image_path(record) for record in records]
    missing = [str(paths[row]) for row in rows[:50] if not paths[row].is_file()]
    if missing:
        raise CaptionerError(f"image {missing[0]} not found; pass the folder holding the photos with --images")
    runner = _encoder_for(device, encoder_name, encoder, reference)
    return FeatureCache.build(folder, runner, keys, paths, flip=flip, rows=rows, progress=progress, workers=workers, retry_unreadable=retry_unreadable, log=log)


def describes(index: dict, wanted: dict) -> bool:
    """Whether a cache's index holds the images, producer and shapes of `wanted` (entries it has beside them aside)."""
    return all(index.get(key) == value for key, value in wanted.items())


def _open_or_set_aside(folder: Path, wanted: dict, log: Callable[[str], None]) -> FeatureCache | None:
    """The cache in `folder` (None where there is none yet). A damaged one, or one whose index does
    not hold what the folder's name says (`wanted`), is moved aside to FOLDER.damaged-TIME (never
    deleted), said in one line, and None returned, so it is built again."""
    if not folder.exists() or folder.is_dir() and not (folder / INDEX).exists():
        return None  # nothing there, or a cache whose creation was interrupted before its index: built over
    try:
        if not folder.is_dir():
            raise DamagedCache(f"{folder}: a file, not a cache folder")
        cache = FeatureCache(folder)
        if not describes(cache.index, wanted):
            raise DamagedCache(f"{folder / INDEX}: holds other images, shapes or producer than the folder's name says")
        return cache
    except DamagedCache as damage:
        _set_aside(folder, damage.problem, log)
        return None


def _set_aside(folder: Path, problem: str, log: Callable[[str], None]) -> None:
    """Rename a damaged cache to FOLDER.damaged-TIME (-2, -3... where taken), saying so; a user may
    still want what it holds, so it is never deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, number = folder.with_name(f"{folder.name}{DAMAGED}{stamp}"), 1
    while aside.exists():
        number += 1
        aside = folder.with_name(f"{folder.name}{DAMAGED}{stamp}-{number}")
    try:
        folder.rename(aside)
    except OSError as error:
        raise CaptionerError(f"{problem}; it could not be moved aside ({error.strerror}): move or delete {folder}, then run again") from None
    log(f"feature cache damaged ({problem}); moved aside to {aside.name} (delete it once you no longer need it) and building it again")


def records_with_features(records: list, *caches: FeatureCache) -> tuple[list, list]:
    """`records` split into those whose features every cache holds and those left out (their photo
    could not be read, or has not been cached)."""
    kept, left_out = [], []
    present = [cache.has_features([record.image for record in records]) for cache in caches]
    for record, *flags in zip(records, *present):
        (kept if all(flags) else left_out).append(record)
    return kept, left_out


def stale_caches(cache_root: str | Path, dataset_name: str, encoder_name: str, keys: list[str], made_by: dict) -> list[Path]:
    """Caches of the same dataset, encoder and flip setting holding `keys`, made otherwise
    (another preprocessing or cache format): found so they can be named, never reused or deleted."""
    found = []
    for folder in sorted(Path(cache_root).glob(f"{dataset_name}-{encoder_name}-*")):
        index = _read_index(folder) if DAMAGED not in folder.name else None
        if index is None or bool(index.get("flip")) != made_by["flip"] or {key: index.get(key) for key in made_by} == made_by:
            continue
        if set(keys) <= set(index.get("keys", ())):
            found.append(folder)
    return found


def _read_index(folder: Path) -> dict | None:
    """A cache folder's index.json as far as it names what made the cache (any format), or None
    where there is none or it is damaged."""
    try:
        index = read_json(folder / INDEX, "")
    except CaptionerError:
        return None
    keys = index.get("keys", [])
    return index if isinstance(keys, list) and all(isinstance(key, str) for key in keys) else None


def _difference(index: dict, made_by: dict) -> str:
    """How an existing cache's producer differs from the one wanted, in words."""
    if index.get("format", 1) != made_by["format"]:
        return f"by cache format {index.get('format', 1)} (now {made_by['format']})"
    if index.get("preprocess") != made_by["preprocess"]:
        return f"with other preprocessing ({index.get('preprocess')}; now {made_by['preprocess']})"
    return "otherwise"


def encoder_device(encoder: ImageEncoder) -> torch.device:
    """Where an encoder's weights are (the CPU for one without PyTorch weights)."""
    parameter = next(encoder.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _encoder_for(device: torch.device, name: str, given: ImageEncoder | None, reference: ImageEncoder) -> ImageEncoder:
    """The encoder that caches features on `device`: the one given, or the reference, on the engine
    `encoder_on` chooses for the device (an export folder's graph-only encoder only on the CPU)."""
    from ..runtimes.onnx_encoder import encoder_on

    encoder = given if given is not None else reference
    if encoder.backbone is None and device.type != "cpu":
        encoder = create_encoder(name)
    return encoder_on(encoder, device)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _to_stderr(message: str) -> None:
    tqdm.write(f"captioner: {message}", file=sys.stderr)  # above a progress bar, not through it


def _read_reasons(folder: Path) -> dict[str, str]:
    try:
        lines = (folder / UNREADABLE_LIST).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def _write_reasons(folder: Path, reasons: dict[str, str]) -> None:
    if reasons or (folder / UNREADABLE_LIST).exists():
        text = "".join(f"{key}\t{' '.join(why.split())}\n" for key, why in reasons.items())
        atomic_write_bytes(folder / UNREADABLE_LIST, text.encode("utf-8"))
