"""The output folder of `caption --ray`: shards of caption records, captions-00000.jsonl or .parquet.

A record has the fields of a `caption --output` line (path, captions, tags). JSON Lines shards are
appended to and flushed after every batch, as `caption --output` does; Parquet shards are written
whole and renamed into place. A rerun reads the photos already there and writes new shards for
the rest. A folder holding anything else is refused untouched.
"""
from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

from ..atomic_files import atomic_write_bytes
from ..errors import CaptionerError
from .caption_log import CaptionLog, read_done

SHARD_NAME = re.compile(r"captions-(\d{5,})\.(jsonl|parquet)")
LEFTOVER_NAME = re.compile(r"\.captions-\d{5,}\.parquet\..+\.tmp")  # a Parquet shard being renamed into place when a run was killed
FORMAT_NAMES = {"jsonl": "JSON Lines", "parquet": "Parquet"}
DEFAULT_SHARD_SIZE = 10_000
PARQUET_SECONDS = 60  # a Parquet shard is also closed after this long, so a crash loses at most a minute of work


class ShardFolder:
    """The output folder: only shards of one format (and leftovers of a killed Parquet write), else refused untouched."""

    def __init__(self, folder: Path, shard_format: str):
        self.folder, self.format = folder, shard_format
        self.shards: list[Path] = []
        self.leftovers: list[Path] = []
        if folder.exists() and not folder.is_dir():
            raise CaptionerError(f"--output {folder} is a file; with --ray pass a folder for the caption shards (this file is left as it is)")
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
        for name in names:
            shard = SHARD_NAME.fullmatch(name)
            if shard and (folder / name).is_file():
                if shard.group(2) != shard_format:
                    raise CaptionerError(f"--output {folder} holds {FORMAT_NAMES[shard.group(2)]} shards; pass --format {shard.group(2)} to add to them, or another folder")
                self.shards.append(folder / name)
            elif LEFTOVER_NAME.fullmatch(name):
                self.leftovers.append(folder / name)
            else:
                raise CaptionerError(f"--output {folder} holds {name}, which is not a caption shard; pass a new or empty folder (nothing was changed)")

    def done(self) -> set[str]:
        """The photos already in the shards. A JSON Lines record cut off by a crash is removed (and redone), as `caption --output` does."""
        done: set[str] = set()
        for shard in self.shards:
            done |= read_done(shard, other="--output folder") if self.format == "jsonl" else _parquet_paths(shard)
        return done

    def refusal(self, record: dict) -> str:
        """Why `record` cannot go into this folder's shards ("" when it can): a Parquet string column
        holds UTF-8 only, a JSON Lines shard any file name (escaped as `caption --output` does)."""
        if self.format == "parquet" and not _is_utf8(record["path"]):
            name = record["path"].encode("utf-8", "backslashreplace").decode("utf-8")
            return f"{name}: its file name is not UTF-8, which a Parquet shard cannot hold; rename the file, or caption into JSON Lines shards (--format jsonl)"
        return ""

    def writer(self, shard_size: int) -> "JsonLinesShards | ParquetShards":
        numbers = [int(SHARD_NAME.fullmatch(shard.name).group(1)) for shard in self.shards]
        first = max(numbers, default=-1) + 1
        for leftover in self.leftovers:  # ours (by name), never published: its photos are not in `done`
            leftover.unlink(missing_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        kind = JsonLinesShards if self.format == "jsonl" else ParquetShards
        return kind(self.folder, first, shard_size)


def _parquet_paths(shard: Path) -> set[str]:
    import pyarrow as pa
    import pyarrow.parquet

    try:
        paths = pyarrow.parquet.read_table(shard, columns=["path"]).column("path").to_pylist()
    except (OSError, pa.ArrowException, KeyError) as error:
        raise CaptionerError(f"{shard}: not a Parquet shard written by 'captioner caption --ray' ({error}); pass another --output folder (this one is left as it is)") from None
    return {path for path in paths if isinstance(path, str)}


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shard_name(number: int, suffix: str) -> str:
    return f"captions-{number:05d}.{suffix}"


class JsonLinesShards:
    """Records as JSON lines (the format of `caption --output`), a new file every `shard_size`, flushed to disk after every batch."""

    def __init__(self, folder: Path, first: int, shard_size: int):
        self.folder, self.number, self.shard_size = folder, first, shard_size
        self.log: CaptionLog | None = None
        self.count = 0

    def write(self, record: dict) -> None:
        if self.log is None or self.count == self.shard_size:
            self.close()
            self.log, self.count = CaptionLog(self.folder / shard_name(self.number, "jsonl")), 0
            self.number += 1
        self.log.write(record)
        self.count += 1

    def end_batch(self) -> None:
        if self.log is not None:
            self.log.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


class ParquetShards:
    """Records as Parquet files of at most `shard_size` rows or PARQUET_SECONDS of work, each written whole and renamed into place."""

    def __init__(self, folder: Path, first: int, shard_size: int):
        self.folder, self.number, self.shard_size = folder, first, shard_size
        self.rows: list[dict] = []
        self.started = time.monotonic()

    def write(self, record: dict) -> None:
        if not self.rows:
            self.started = time.monotonic()
        self.rows.append(record)
        if len(self.rows) == self.shard_size:
            self._publish()

    def end_batch(self) -> None:
        if self.rows and time.monotonic() - self.started >= PARQUET_SECONDS:
            self._publish()

    def close(self) -> None:
        if self.rows:
            self._publish()

    def _publish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet

        buffer = io.BytesIO()
        pyarrow.parquet.write_table(pa.Table.from_pylist(self.rows, schema=record_schema()), buffer)
        atomic_write_bytes(self.folder / shard_name(self.number, "parquet"), buffer.getvalue())
        self.number, self.rows = self.number + 1, []


def record_schema():
    """The Parquet schema of a record: the fields of a `caption --output` line."""
    import pyarrow as pa

    captions = pa.list_(pa.struct([("rank", pa.int64()), ("text", pa.string()), ("score", pa.float64()), ("confidence", pa.float64())]))  # confidence null without a calibration
    tags = pa.list_(pa.struct([("word", pa.string()), ("score", pa.float64())]))
    return pa.schema([("path", pa.string()), ("captions", captions), ("tags", tags)])
