"""Type and range checks for settings read from JSON files or `--set`, run before any work.

A dataclass config lists its fields' types in its annotations; `check_fields` holds each value
to that type and to an optional `Limit`, and names the file and field when one is wrong, so a
typo costs one line of output instead of a traceback after an hour of feature caching.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields

from ..errors import CaptionerError


class ConfigError(CaptionerError):
    """A setting has the wrong type or is out of range."""


@dataclass(frozen=True)
class Limit:
    """The allowed range of a number: `low <= x <= high`, with either end exclusive if asked."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(part for part in (low, high) if part)


POSITIVE = Limit(0, low_open=True)
AT_LEAST_ONE = Limit(1)
NOT_NEGATIVE = Limit(0)
PROBABILITY = Limit(0, 1)
FRACTION_BELOW_ONE = Limit(0, 1, high_open=True)
MAX_BEAM = 20  # the widest beam search, everywhere but the server (server/schemas.MAX_BEAM_SIZE: fewer, to bound its memory)
BEAM_SIZES = Limit(1, MAX_BEAM)


def _type_name(kind) -> str:
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string", list: "a list", dict: "an object"}.get(kind, getattr(kind, "__name__", str(kind)))


def check_value(value, kind, limit: Limit | None, name: str):
    """`value` as the field's type (an int is a valid float), or raise ConfigError."""
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        if value is None:
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    kind = typing.get_origin(kind) or kind
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
    }.get(kind, isinstance(value, kind) if isinstance(kind, type) else True)
    if not ok:
        raise ConfigError(f"{name} must be {_type_name(kind)}, not {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {value!r}")
    if limit is not None and kind in (int, float) and not limit.allows(value):
        raise ConfigError(f"{name} must be {limit.describe()}, not {value!r}")
    return float(value) if kind is float else value


def check_fields(config_class, data, limits: dict[str, Limit], where: str, nested: tuple[str, ...] = (), section: str | None = None) -> dict:
    """Check `data` (a JSON object) against the dataclass's fields: unknown keys, types, limits.

    Fields named in `nested` are left for the caller (they hold another config). Returns a copy
    with floats normalised; `where` (a file name or "training config") starts every message, and
    a `section` of it names fields as `section.field`.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {section} must be an object, not {data!r}" if section else f"{where}: must be a JSON object of settings, not {type(data).__name__}")
    known = {field.name: field for field in fields(config_class)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: {section + ': ' if section else ''}unknown settings {', '.join(unknown)}; known: {', '.join(known)}")
    hints = typing.get_type_hints(config_class)
    checked = dict(data)
    for key, value in data.items():
        if key not in nested:
            checked[key] = check_value(value, hints[key], limits.get(key), f"{where}: {section}.{key}" if section else f"{where}: {key}")
    return checked
