"""Batch captioning's JSON Lines output (`caption --output FILE`): one line per photo, appended and
synced to disk after every batch, so a rerun after a crash skips what is already there and loses nothing.

Any file name can be written: a name's bytes that are not UTF-8 (which Python reads as the lone
surrogates U+DC80..U+DCFF, its "surrogateescape" rule, as `os.fsdecode` does) are written as
JSON escapes `\\udc80`..`\\udcff`, so the file stays UTF-8 and `json.loads` gives the same name back
(`os.fsencode` gives its bytes).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import CaptionerError

_SURROGATE = re.compile("[\ud800-\udfff]")


def record_line(record: dict) -> str:
    """A record as one line of JSON, valid UTF-8 whatever its file name: lone surrogates become \\uXXXX escapes."""
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", json.dumps(record, ensure_ascii=False))


def read_done(path: Path, other: str = "--output file") -> set[str]:
    """The photo paths already in `path` (nothing if it does not exist yet), as written.

    A last line without its newline is the record being written when a run stopped: it is removed
    (the only change ever made to the file) and that photo captioned again. Any other line that
    is not a JSON object with a "path" refuses the file untouched (the message says to pass `other`).
    """
    if not path.exists():
        return set()
    if not path.is_file():
        raise CaptionerError(f"--output {path} is not a file; pass a .jsonl file to write the captions to")
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, last = lines[:-1], lines[-1]  # `last` is empty when the file ends with a newline
    done = set()
    for number, line in enumerate(complete, 1):
        if line.strip():
            done.add(_path_of(line, path, number, other))
    if last.strip():
        try:
            done.add(_path_of(last, path, len(lines), other))
            mend = lambda: _append(path, b"\n")  # noqa: E731  (a whole record that lost only its newline)
        except CaptionerError:
            if not (last.startswith(RECORD_START) or RECORD_START.startswith(last)):
                raise  # not ours: refused, untouched
            mend = lambda: os.truncate(path, len(data) - len(last))  # noqa: E731  (the record being written when the run stopped)
        try:
            mend()
        except OSError as error:
            raise CaptionerError(f"--output {path}: cannot mend its last, cut-off line ({error.strerror or error}); pass an --output on a writable disk") from None
    return done


def photo_tags(captions) -> list:
    """A photo's tags: every caption of a photo carries them."""
    return captions[0].tags if captions else []


def caption_record(path: Path | str, captions) -> dict:
    """One photo's record, as `--json`, `--output` and `--ray` write it: its path, its ranked captions and its tags."""
    return {
        "path": str(path),
        "captions": [{"rank": rank, "text": c.text, "score": c.score, "confidence": c.confidence} for rank, c in enumerate(captions, 1)],
        "tags": [{"word": t.word, "score": t.score} for t in photo_tags(captions)],
    }


RECORD_START = b'{"path": '  # how every line `CaptionLog` writes begins


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def _path_of(line: bytes, path: Path, number: int, other: str) -> str:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise CaptionerError(f"{path}:{number}: not a line written by 'captioner caption --output'; pass another {other} (this one is left as it is)")
    return record["path"]


class CaptionLog:
    """Appends one JSON line per photo: lines wait in memory and are written and synced together
    after every batch (`flush`). A batch that cannot be written whole (a full disk) is taken back
    out, so the file keeps every earlier record and no cut-off line."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.created = not path.exists()
            self.descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            raise CaptionerError(f"--output {path}: cannot write it ({error.strerror or error}); pass an --output on a writable disk") from None
        self.pending: list[str] = []
        self.written = 0  # records on disk

    def write(self, record: dict) -> None:
        self.pending.append(record_line(record) + "\n")

    def flush(self) -> None:
        if not self.pending:
            return
        data = memoryview("".join(self.pending).encode("utf-8"))
        count, self.pending = len(self.pending), []
        end = os.lseek(self.descriptor, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self.descriptor, data):]
            os.fsync(self.descriptor)
        except OSError as error:
            try:
                os.ftruncate(self.descriptor, end)
            except OSError:
                pass  # a cut-off last line is removed by the next run (read_done)
            raise CaptionerError(
                f"{self.path}: cannot write ({error.strerror or error}); every record already in it is kept: "
                "free some space (or fix the disk) and run the same command again to caption the rest"
            ) from None
        self.written += count

    def close(self) -> None:
        """Write what is pending and close; a file this log made and never wrote to is removed again."""
        if self.descriptor is None:
            return
        try:
            self.flush()
        finally:
            os.close(self.descriptor)
            self.descriptor = None
            if self.created and self.written == 0:
                _remove_if_empty(self.path)


def _remove_if_empty(path: Path) -> None:
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass  # an empty file left behind is a valid, empty output
