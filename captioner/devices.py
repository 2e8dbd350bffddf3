"""One device choice for every command: `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`,
and how many CPU threads each part of captioning uses.

The choice comes from `--device`, else the CAPTIONER_DEVICE environment variable, else `auto`.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading

import torch

from .errors import CaptionerError

DEVICE_ENVIRONMENT_VARIABLE = "CAPTIONER_DEVICE"
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(choice: str | torch.device | None = None) -> torch.device:
    """The torch device for a user's choice, refused with one line when it does not exist here."""
    if isinstance(choice, torch.device):
        return choice
    text = (choice or os.environ.get(DEVICE_ENVIRONMENT_VARIABLE) or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise CaptionerError(f"unknown device {text!r}; choose {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        build = "this PyTorch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise CaptionerError(f"device {text!r} asked for, but {build}; use --device cpu (or auto)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise CaptionerError(f"device {text!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU supports it, else float16 (which needs a gradient scaler); bfloat16
    on the CPU too, where a training step measured 1.5x faster than float32 (560 vs 831 ms, batch 64),
    but only on CPUs with native bfloat16 (oneDNN cannot run an LSTM in bfloat16 on the others)."""
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_bfloat16() else None
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _cpu_has_bfloat16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision autocast on the GPU, a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


_single_thread = threading.Lock()
_single_thread_users = 0
_threads_before = 1


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """PyTorch on one CPU thread inside the block (decoding: many small operations).

    A small operation split over OpenMP threads ends at a barrier that waits for every thread; on a
    busy machine one of them is often off its core, and each step then waits a time slice: one
    caption took 0.8-4.8 s on two threads beside other jobs, 0.15-0.22 s on one. On a quiet
    machine one thread costs about a tenth (one caption of the bundled examples, alternating in one
    process: 101 vs 90 ms); `benchmarks/busy_machine.py` measures both. The encoder's ONNX Runtime pool
    (threads that steal work and do not spin) keeps its own count. Nested and concurrent blocks
    restore the count set before the first of them.
    """
    global _single_thread_users, _threads_before
    if device.type != "cpu":
        yield
        return
    with _single_thread:
        if _single_thread_users == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        _single_thread_users += 1
    try:
        yield
    finally:
        with _single_thread:
            _single_thread_users -= 1
            if _single_thread_users == 0:
                torch.set_num_threads(_threads_before)
