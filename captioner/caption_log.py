"""Batch captioning's JSON Lines output (`caption --output FILE`): one line per photo, appended and
flushed as it goes, so a rerun after a crash skips what is already there and loses nothing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CaptionerError


def read_done(path: Path) -> set[str]:
    """The photo paths already in `path` (nothing if it does not exist yet).

    A last line without its newline is the record being written when a run stopped: it is removed
    (the only change ever made to the file) and that photo captioned again. Any other line that
    is not a JSON object with a "path" refuses the file untouched.
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
            done.add(_path_of(line, path, number))
    if last.strip():
        try:
            done.add(_path_of(last, path, len(lines)))
            with open(path, "ab") as file:  # a whole record that lost only its newline
                file.write(b"\n")
        except CaptionerError:
            if not last.startswith(RECORD_START):
                raise  # not ours: refused, untouched
            os.truncate(path, len(data) - len(last))  # the record being written when the run stopped
    return done


RECORD_START = b'{"path": '  # how every line `CaptionLog` writes begins


def _path_of(line: bytes, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise CaptionerError(f"{path}:{number}: not a line written by 'captioner caption --output'; pass another --output file (this one is left as it is)")
    return record["path"]


class CaptionLog:
    """Appends one JSON object per photo to an open file, flushed to disk after every batch."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.flush()
        self.file.close()
