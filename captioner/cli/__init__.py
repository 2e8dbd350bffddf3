"""The command line: `captioner caption | train | evaluate | export | serve | ...`."""

from .commands import main

__all__ = ["main"]
