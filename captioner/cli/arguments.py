"""The command line's argument types: numbers within limits, devices and backends spelled
right, usage errors as one line. Nothing here imports torch, so `--help` and bad options are fast."""
from __future__ import annotations

import argparse
import math
import re

from ..model.config_checks import AT_LEAST_ONE, BEAM_SIZES, MAX_BEAM, NOT_NEGATIVE, POSITIVE, Limit


def bounded_number(kind, limit: Limit, what: str):
    """An argparse type: a number of `kind` within `limit`, else a one-line usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if kind is float and not math.isfinite(value) or not limit.allows(value):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value
    return parse


COUNT = bounded_number(int, AT_LEAST_ONE, "a whole number >= 1")


MAX_THREADS = 256  # more than any machine here has cores; --threads 100000 crashed PyTorch's thread pool (exit 139)


THREADS = bounded_number(int, Limit(1, MAX_THREADS), f"a whole number from 1 to {MAX_THREADS}")


ZERO_OR_MORE = bounded_number(int, NOT_NEGATIVE, "a whole number >= 0")


POSITIVE_NUMBER = bounded_number(float, POSITIVE, "a number > 0")


FINITE_NUMBER = bounded_number(float, Limit(), "a finite number")


TOP_P = bounded_number(float, Limit(0, 1, low_open=True), "a number > 0 and <= 1")


BEAM = bounded_number(int, BEAM_SIZES, f"a whole number from 1 to {MAX_BEAM}")


PORT = bounded_number(int, Limit(1, 65535), "a port number from 1 to 65535")


DEVICE_HELP = "auto (a CUDA GPU when present; the default), cpu, cuda or cuda:N; also set by CAPTIONER_DEVICE"




BACKEND_HELP = "pytorch or onnxruntime (the CPU; a model folder is exported in memory at load); default: onnxruntime for an ONNX export folder, else pytorch"


def DEVICE(text: str) -> str:
    """An argparse type: the spelling of a device choice (whether it exists is checked when it is used)."""
    choice = text.strip().lower()
    if choice not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", choice):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, not {text!r}")
    return choice


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (`captioner caption: error: ...`) pointing at --help, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
