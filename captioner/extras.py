"""Optional packages, installed with an extra of captioner (`pip install 'captioner[serve]'`).

The base install captions photos; serving, training and evaluation, and Ray each bring their own
packages. A command that needs one that is missing says so in one line, naming the extra that
installs it, before any work.
"""
from __future__ import annotations

import importlib.util

from .errors import CaptionerError

EXTRAS = ("serve", "train", "ray")  # as pyproject.toml's [project.optional-dependencies]


def install_hint(extra: str) -> str:
    assert extra in EXTRAS, extra
    return f"pip install 'captioner[{extra}]'"


def require(module: str, extra: str, what: str) -> None:
    """CaptionerError naming the extra to install, where `module` (needed for `what`) is not installed."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        found = False
    if not found:
        raise CaptionerError(f"{what} needs the package {module!r}, which is not installed; install it with: {install_hint(extra)}")
