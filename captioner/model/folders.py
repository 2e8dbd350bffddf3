"""`Captioner.save_pretrained(path)`: a loaded model written back as a folder, atomically.

The folder is written under a temporary name beside `path` and renamed into place, so `path` holds
either the old model or the new one, never half of each. A folder that is not empty is replaced
only when captioner wrote it (a model or ONNX export folder), never a folder of the user's files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from ..atomic_files import atomic_write_bytes, current_umask
from ..errors import CaptionerError
from ..runtimes.onnx_export import MANIFEST
from .checkpoint import CONFIG, VOCABULARY, WEIGHTS, save_model

MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".onnx")


def save_captioner(captioner, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write `captioner` to `path` (see `Captioner.save_pretrained`); returns `path`."""
    check_save_target(path, captioner.path)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.saving-"))
    try:
        os.chmod(temporary, 0o777 & ~current_umask())  # mkdtemp makes it private
        if captioner.backend == "pytorch":
            _write_model_folder(captioner, temporary, dtype)
        else:  # the ONNX graphs come unchanged from the folder they were loaded from
            _copy_model_files(captioner.path, temporary)
        _put_in_place(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path


def check_save_target(path: Path, source: Path | None) -> None:
    """Refuse, before any write, a target that is a file, the model's own folder, or a folder holding files captioner did not write."""
    if path.exists() and not path.is_dir():
        raise CaptionerError(f"{path} is a file; give a folder to save the model into")
    if not path.parent.is_dir():
        raise CaptionerError(f"{path.parent}: no such folder; create it first")
    if source is not None and path.exists() and path.resolve() == Path(source).resolve():
        raise CaptionerError(f"{path} is the folder this model was loaded from; save it into another folder")
    if path.is_dir() and any(path.iterdir()):
        foreign = [entry.name for entry in sorted(path.iterdir()) if not entry.is_file() or not entry.name.endswith(MODEL_FILE_SUFFIXES)]
        if foreign or not ((path / CONFIG).is_file() or (path / MANIFEST).is_file()):
            example = f" (e.g. {foreign[0]!r})" if foreign else ""
            raise CaptionerError(f"{path} holds files captioner did not write{example}; save into an empty or new folder")


def _write_model_folder(captioner, folder: Path, dtype: torch.dtype | None) -> None:
    detector = captioner.concept_detector if captioner.config.concepts is not None else None
    save_model(folder, captioner.decoder, captioner.vocabulary, captioner.config, dtype=dtype or _stored_dtype(captioner.path), concept_detector=detector)
    if captioner.path is not None:  # what else the model folder says about the model: metrics.json and the like
        for extra in sorted(Path(captioner.path).glob("*.json")):
            if extra.name not in (CONFIG, VOCABULARY, MANIFEST) and extra.is_file():
                atomic_write_bytes(folder / extra.name, extra.read_bytes())


def _stored_dtype(source: Path | None) -> torch.dtype | None:
    """The float type of the weights in `source`'s model folder (None: float32, as in memory)."""
    weights = Path(source) / WEIGHTS if source is not None else None
    if weights is None or not weights.is_file():
        return None
    with safe_open(weights, "pt") as handle:
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            if tensor.is_floating_point():
                return tensor.dtype
    return None


def _copy_model_files(source: Path | None, folder: Path) -> None:
    if source is None:
        raise CaptionerError("this model was not loaded from a folder; load it with backend='pytorch' to save it")
    for entry in sorted(Path(source).iterdir()):
        if entry.is_file() and entry.name.endswith(MODEL_FILE_SUFFIXES):
            shutil.copyfile(entry, folder / entry.name)


def _put_in_place(temporary: Path, path: Path) -> None:
    """Rename the written folder to `path`; an old model there is moved aside first and removed last."""
    if not path.exists():
        os.rename(temporary, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.rename(path, old / path.name)
    try:
        os.rename(temporary, path)
    except BaseException:
        os.rename(old / path.name, path)  # put the old model back
        raise
    shutil.rmtree(old, ignore_errors=True)
