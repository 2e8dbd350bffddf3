"""One run at a time per caption output: `caption --output FILE` and `caption --ray ... --output FOLDER`.

While a run goes, it holds an OS lock (`fcntl.flock`) on `.NAME.lock` beside its output and has
written its process id there; a second run on the same output is refused in one line naming the
first, instead of captioning every photo again into the same file. The kernel drops the lock when
a run ends in any way (a crash, kill -9), so a lock file left by a killed run stops nobody; a run
that ends normally removes it, and the folders it had to make for the output if they stayed empty.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CaptionerError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not kept apart there
    fcntl = None

LOCK_TEXT = re.compile(rb"(captioner run, pid \d+\n)?")  # what a lock file holds: ours, or empty while being written


def lock_path(output: Path) -> Path:
    """The lock file of `output`: `.NAME.lock` in the same folder."""
    output = Path(os.path.abspath(output))
    return output.with_name(f".{output.name}.lock")


def check_output_place(output: Path, flag: str = "--output") -> None:
    """Refuse, before any work, an output under a file (its folder can never be made)."""
    for ancestor in Path(os.path.abspath(output)).parents:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise CaptionerError(f"{flag} {output}: {ancestor} is a file, not a folder; pass an {flag} path in a folder")
            return


def _cannot_write(output: Path, flag: str, error: OSError) -> CaptionerError:
    return CaptionerError(f"{flag} {output}: cannot write there ({error.strerror or error}); pass an {flag} on a writable disk (nothing was written)")


class OutputLock:
    """Held from `acquire` to `release` (or the end of a `with` block)."""

    def __init__(self, output: Path, flag: str = "--output", what: str = "file"):
        self.output, self.flag, self.what = Path(output), flag, what
        self.path = lock_path(output)
        self.descriptor: int | None = None
        self.made: list[Path] = []  # folders made for the output, removed again if they stay empty

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *_) -> None:
        self.release()

    def acquire(self) -> None:
        check_output_place(self.output, self.flag)
        self._make_folders()
        try:
            while self.descriptor is None:
                descriptor = self._open()
                try:
                    self._lock(descriptor)
                    if self._still_in_place(descriptor):  # not removed by the run that held it before
                        os.ftruncate(descriptor, 0)
                        os.write(descriptor, f"captioner run, pid {os.getpid()}\n".encode())
                        self.descriptor = descriptor
                        break
                except BaseException:
                    os.close(descriptor)
                    raise
                os.close(descriptor)
        except OSError as error:
            self._remove_made_folders()
            raise _cannot_write(self.output, self.flag, error) from None
        except CaptionerError:
            self._remove_made_folders()
            raise

    def release(self) -> None:
        if self.descriptor is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a run waiting on it sees it gone and opens a new one
        except OSError:
            pass  # a lock file left behind stops nobody
        os.close(self.descriptor)
        self.descriptor = None
        self._remove_made_folders()

    def _make_folders(self) -> None:
        missing = [folder for folder in self.path.parents if not os.path.lexists(folder)]
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # made by another run just now
            except OSError as error:
                self._remove_made_folders()
                raise _cannot_write(self.output, self.flag, error) from None
            self.made.append(folder)

    def _remove_made_folders(self) -> None:
        for folder in reversed(self.made):
            try:
                folder.rmdir()  # only if empty: the output or anything else in it stays
            except OSError:
                break
        self.made = []

    def _open(self) -> int:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        if not LOCK_TEXT.fullmatch(os.pread(descriptor, 200, 0)):
            os.close(descriptor)
            raise CaptionerError(f"{self.path} is in the way of the lock file of {self.flag} {self.output} and is not one; move it away (it was left as it is)")
        return descriptor

    def _lock(self, descriptor: int) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
            pid = re.search(r"pid (\d+)", holder)
            other = f"another captioner run (pid {pid.group(1)})" if pid else "another captioner run"
            raise CaptionerError(f"{other} is writing to {self.flag} {self.output}; wait for it to end, or pass another {self.flag} {self.what}") from None

    def _still_in_place(self, descriptor: int) -> bool:
        try:
            return os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            return False
