"""The output folder of a run (training, evaluation), and replacing a training run an old run there (`--force`) without losing it early.

`--force` never deletes at the start: the files an earlier run wrote are moved aside into
`.replaced-run/` once the new run has passed every check, and deleted only when the new run has
saved its first checkpoint. If the new run fails before that, what it wrote is removed and the
earlier files are moved back. Files the project did not write are never deleted.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .errors import CaptionerError

# Everything `train` writes into a run folder; the model folders hold only these files.
RUN_FILES = ("training_config.json", "history.json", "history.png", "concepts_report.json")
MODEL_FOLDERS = ("best", "last")
MODEL_FILES = (
    "config.json", "vocabulary.json", "model.safetensors", "concepts.safetensors", "metrics.json",
    "optimizer.safetensors", "training_state.json",
)
ASIDE = ".replaced-run"


def check_output_folder(output: Path, resume: bool, force: bool) -> None:
    """Refuse, before any work, an output that cannot hold a new (or resumed) run."""
    if output.exists() and not output.is_dir():
        raise CaptionerError(f"{output} is a file, not a folder; pass --output a folder for the run")
    if (output / ASIDE).exists():
        raise CaptionerError(f"{output / ASIDE} holds a run replaced by an interrupted --force; move it back or delete it first")
    if resume:
        if not (output / "last" / "training_state.json").is_file():
            raise CaptionerError(f"{output}: nothing to resume (no last/training_state.json); start a new run without --resume")
    elif output.exists() and any(output.iterdir()) and not force:
        raise CaptionerError(f"{output} already exists; pass --resume to continue that run or --force to replace it")


def check_results_folder(output: Path, force: bool) -> None:
    """Refuse, before any work, an evaluation output that is a file, or a folder with files in it (unless `force`)."""
    if output.exists() and not output.is_dir():
        raise CaptionerError(f"{output} is a file, not a folder; pass --output a folder for the results")
    if output.exists() and any(output.iterdir()) and not force:
        raise CaptionerError(f"{output} already exists; pass --force to overwrite it or --output for another folder")


def _run_entries(folder: Path) -> list[Path]:
    """The files and model folders in `folder` that a training run wrote."""
    return [folder / name for name in RUN_FILES + MODEL_FOLDERS if (folder / name).exists()]


def _remove_written(folder: Path) -> None:
    """Delete what a run wrote in `folder`, leaving anything else (and the folders holding it)."""
    for entry in _run_entries(folder):
        if entry.is_dir() and entry.name in MODEL_FOLDERS:
            for name in MODEL_FILES:
                (entry / name).unlink(missing_ok=True)
            for temporary in entry.glob(".*.tmp"):
                temporary.unlink()
            if not any(entry.iterdir()):
                entry.rmdir()
        elif entry.is_file():
            entry.unlink()


class PendingRun:
    """A run that has not saved its first checkpoint yet.

    `start` moves an earlier run's files aside (with `replace`); `commit`, called after each
    checkpoint, deletes them once; `abandon`, on failure before the first checkpoint, removes
    what the new run wrote and puts the earlier run back, so a failed start leaves the folder as
    it was and a corrected rerun is not refused.
    """

    def __init__(self, output: Path):
        self.output, self.aside = output, output / ASIDE
        self.existed = output.exists()
        self.moved: list[str] = []
        self.committed = False

    def start(self, replace: bool) -> None:
        entries = _run_entries(self.output) if replace else []
        if entries:
            self.aside.mkdir()
            for entry in entries:
                entry.rename(self.aside / entry.name)
                self.moved.append(entry.name)

    def commit(self) -> None:
        """The new run has a checkpoint: the old run's files go for good; files the project did
        not write go back where they were (or stay in `.replaced-run/` if that place is taken)."""
        if self.committed:
            return
        self.committed = True
        if not self.moved:
            return
        _remove_written(self.aside)
        for leftover in sorted(self.aside.rglob("*"), reverse=True):  # deepest first
            target = self.output / leftover.relative_to(self.aside)
            if leftover.is_file() and not target.exists():
                target.parent.mkdir(exist_ok=True)
                leftover.rename(target)
            elif leftover.is_dir() and not any(leftover.iterdir()):
                leftover.rmdir()
        if not any(self.aside.iterdir()):
            self.aside.rmdir()

    def abandon(self) -> None:
        """The new run failed before its first checkpoint: leave the folder as it was found."""
        if self.committed:
            return  # a run with a checkpoint can be resumed; keep it
        if self.output.is_dir():
            _remove_written(self.output)
        for name in self.moved:
            target = self.output / name
            if target.exists():  # a model folder the new run left holding a user's file
                shutil.copytree(self.aside / name, target, dirs_exist_ok=True)
                shutil.rmtree(self.aside / name)
            else:
                (self.aside / name).rename(target)
        if self.moved and not any(self.aside.iterdir()):
            self.aside.rmdir()
        if not self.existed and self.output.is_dir() and not any(self.output.iterdir()):
            self.output.rmdir()
