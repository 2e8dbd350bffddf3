"""Where a training run stands, and what `--resume` reads back: the progress (epoch, step, best
dev CIDEr, history, the learning-rate schedule's length) in `last/training_state.json`, and the
optimizer's moments and every process's random state in `last/optimizer.safetensors`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic_files import atomic_save_tensors, atomic_write_json
from ..errors import CaptionerError
from ..json_files import read_json
from ..model.config_checks import AT_LEAST_ONE, NOT_NEGATIVE, ConfigError, check_value

RESUME_REMEDY = "the run cannot be resumed from it: put back the run's own file, or start the run again with --force"
STATE = "training_state.json"


@dataclass
class Progress:
    """A run's progress after its last finished epoch (epoch 0: none yet)."""

    total_steps: int  # the learning-rate schedule's length
    epochs: int  # the epochs that schedule was planned for
    epoch: int = 0
    step: int = 0
    best_cider: float = -1.0
    bad_epochs: int = 0  # epochs since the dev CIDEr last improved (early stopping)
    history: list[dict] = field(default_factory=list)

    def record(self, entry: dict) -> bool:
        """Add an epoch's scores; whether its dev CIDEr is the best so far."""
        self.epoch = entry["epoch"]
        self.history.append(entry)
        improved = entry["dev_cider"] > self.best_cider
        if improved:
            self.best_cider, self.bad_epochs = entry["dev_cider"], 0
        else:
            self.bad_epochs += 1
        return improved

    def to_dict(self) -> dict:
        """The JSON `training_state.json` holds (without the optimizer's groups)."""
        return {"epoch": self.epoch, "step": self.step, "best_cider": self.best_cider, "bad_epochs": self.bad_epochs, "history": self.history,
                "schedule": {"total_steps": self.total_steps, "epochs": self.epochs}}

    @classmethod
    def resumed(cls, saved: dict, total_steps_now: int, epochs: int, log) -> "Progress":
        """The progress `read_training_state` read; the schedule as first planned (`planned_total_steps`)."""
        total_steps = planned_total_steps(saved.get("schedule"), total_steps_now, epochs, log)
        return cls(total_steps, epochs, saved["epoch"], saved["step"], saved["best_cider"], saved["bad_epochs"], saved["history"])


def planned_total_steps(schedule: dict | None, steps_now: int, epochs: int, log) -> int:
    """The learning-rate schedule's length on --resume: as first planned, even if the data changed;
    stretched in proportion when the run is resumed with another number of epochs."""
    if schedule is None:  # a run saved before the schedule was recorded
        return steps_now
    if schedule["epochs"] == epochs:
        return schedule["total_steps"]
    total_steps = round(schedule["total_steps"] * epochs / schedule["epochs"])
    log(f"learning-rate schedule: {schedule['epochs']} -> {epochs} epochs, {schedule['total_steps']} -> {total_steps} steps")
    return total_steps


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch random state: the CPU generator's, and the GPU's when it trains on one."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_training_state(folder: Path, optimizer: torch.optim.Optimizer, progress: dict, random_states: list[dict[str, torch.Tensor]]) -> None:
    """Optimizer moments and every process's random state (`rng.torch`, `rng.cuda` for rank 0,
    `rng.torch.rank1`... for the others) in safetensors; progress and settings in JSON."""
    state = optimizer.state_dict()
    tensors = {f"optimizer.{index}.{name}": value for index, entries in state["state"].items() for name, value in entries.items() if torch.is_tensor(value)}
    for rank, states in enumerate(random_states):
        tensors.update({f"rng.{name}{f'.rank{rank}' if rank else ''}": value for name, value in states.items()})
    atomic_save_tensors(folder / "optimizer.safetensors", tensors)
    atomic_write_json(folder / STATE, {**progress, "param_groups": state["param_groups"]})


def read_training_state(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The progress and optimizer state `save_training_state` wrote in `folder`, checked (on
    --resume, before any work): one line naming the file and the field where they are damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / STATE
    progress = read_json(path, RESUME_REMEDY)
    missing = [key for key in ("epoch", "step", "best_cider", "bad_epochs", "history", "param_groups") if key not in progress]
    if missing:
        raise CaptionerError(f"{path}: lacks {', '.join(missing)}; {RESUME_REMEDY}")
    try:
        for key, kind, limit in (("epoch", int, AT_LEAST_ONE), ("step", int, NOT_NEGATIVE), ("best_cider", float, None), ("bad_epochs", int, NOT_NEGATIVE), ("history", list, None), ("param_groups", list, None)):
            check_value(progress.get(key), kind, limit, f"{path}: {key}")
        for key in ("schedule", "grad_scaler"):
            check_value(progress.get(key), dict | None, None, f"{path}: {key}")
    except ConfigError as error:
        raise CaptionerError(f"{error}; {RESUME_REMEDY}") from None
    schedule = progress.get("schedule")
    if schedule is not None and not all(type(schedule.get(key)) is int and schedule[key] > 0 for key in ("total_steps", "epochs")):
        raise CaptionerError(f"{path}: schedule must hold total_steps and epochs, whole numbers >= 1, not {schedule!r}; {RESUME_REMEDY}")
    if not progress["param_groups"] or not all(isinstance(group, dict) and isinstance(group.get("params"), list) for group in progress["param_groups"]):
        raise CaptionerError(f"{path}: param_groups must be the optimizer's groups of parameters; {RESUME_REMEDY}")
    if not all(isinstance(entry, dict) for entry in progress["history"]):
        raise CaptionerError(f"{path}: history must be a list of the epochs' scores; {RESUME_REMEDY}")
    try:
        tensors = load_file(folder / "optimizer.safetensors")
    except (SafetensorError, OSError) as error:
        raise CaptionerError(f"{folder / 'optimizer.safetensors'}: unreadable ({str(error).splitlines()[0][:200]}); {RESUME_REMEDY}") from None
    return progress, tensors


def load_training_state(folder: Path, saved: tuple[dict, dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer, device: torch.device, rank: int = 0, seed: int = 0) -> dict:
    """Restore the optimizer and this process's random state from `saved` (`read_training_state`);
    return the saved progress. A rank the run did not have before (more processes now) gets a fresh seed."""
    progress, tensors = dict(saved[0]), saved[1]
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value  # load_state_dict moves them to the parameters' device
    try:
        optimizer.load_state_dict({"state": state, "param_groups": progress.pop("param_groups")})
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CaptionerError(f"{folder / STATE}: the optimizer state does not fit the run's model ({str(error).splitlines()[0][:200]}); {RESUME_REMEDY}") from None
    suffix = f".rank{rank}" if rank else ""
    if f"rng.torch{suffix}" in tensors:
        torch.set_rng_state(tensors[f"rng.torch{suffix}"])
    else:
        torch.manual_seed(seed + rank)
    if device.type == "cuda" and f"rng.cuda{suffix}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"], device)
    return progress
