"""Reading the JSON files the project writes (configs, manifests, indexes, training state).

One place turns a file that is missing, unreadable, not UTF-8, not JSON or of the wrong kind into
one line naming the file, what is wrong with it and what to do, so no reader shows a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import CaptionerError

_KIND_NAMES = {dict: "object", list: "list", str: "string"}


def read_json(path: str | Path, remedy: str, error: type[CaptionerError] = CaptionerError, expect: type | None = dict):
    """The JSON value in `path` (a `dict` unless `expect` says otherwise; None: any value).

    Raises `error` with the message `PATH: what is wrong; REMEDY` (no REMEDY where it is empty)
    when it cannot be had.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        problem = "missing"
    except IsADirectoryError:
        problem = "a folder, not a file"
    except OSError as failure:
        problem = f"unreadable ({failure.strerror or failure})"
    except UnicodeDecodeError as failure:
        problem = f"not UTF-8 text (byte {failure.start} is {failure.object[failure.start]:#04x})"
    except json.JSONDecodeError as failure:
        problem = f"not valid JSON ({failure.msg} at line {failure.lineno} column {failure.colno})"
    except RecursionError:  # json recurses once per nested list or object
        problem = "not valid JSON (nested too deeply)"
    else:
        if expect is None or isinstance(value, expect):
            return value
        problem = f"must be a JSON {_KIND_NAMES.get(expect, expect.__name__)}, not {_json_kind(value)}"
    raise error(f"{path}: {problem}" + (f"; {remedy}" if remedy else ""))


def _json_kind(value) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {_KIND_NAMES.get(type(value), type(value).__name__)}"
