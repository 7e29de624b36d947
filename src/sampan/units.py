"""Durations and byte sizes written the way people write them ("30s", "10MiB").

Config files are read by humans, so every timeout and limit accepts a unit suffix;
the models still see plain numbers (float seconds, int bytes), which is what the
code that uses them wants.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "DURATION_PATTERN",
    "SIZE_PATTERN",
    "ByteSize",
    "Duration",
    "describe_value",
    "format_byte_size",
    "format_duration",
    "parse_byte_size",
    "parse_duration",
]

# Longest unit first so "ms" is never read as "m" followed by garbage.
_DURATION_UNITS: Final = MappingProxyType(
    {
        "ms": Fraction(1, 1000),
        "s": Fraction(1),
        "m": Fraction(60),
        "h": Fraction(3600),
        "d": Fraction(86400),
    }
)
_SIZE_UNITS: Final = MappingProxyType(
    {
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "pb": 10**15,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
        "pib": 2**50,
    }
)
_NUM: Final = r"\d+(?:\.\d+)?"
_PLAIN_NUMBER: Final = re.compile(r"[+-]?" + _NUM)
_DURATION_PART: Final = re.compile(rf"({_NUM})\s*(ms|s|m|h|d)")
DURATION_PATTERN: Final = rf"^\s*(?:{_NUM}\s*(?:ms|s|m|h|d)\s*)+$"
"""Strings accepted as durations (besides plain numbers): one or more number+unit parts."""
_DURATION_RE: Final = re.compile(DURATION_PATTERN)
SIZE_PATTERN: Final = rf"^\s*{_NUM}\s*(?:[kKmMgGtTpP][iI]?)?[bB]?\s*$"
"""Strings accepted as byte sizes: a number with an optional SI (kB) or IEC (KiB) unit."""
_SIZE_RE: Final = re.compile(rf"\s*({_NUM})\s*([a-zA-Z]*)\s*")

_DURATION_HINT: Final = "seconds or a string like '500ms', '30s', '5m', '2h', '7d' or '1h30m'"
_SIZE_HINT: Final = "bytes or a string like '512KiB', '10MiB', '1GiB', '1GB' or '1kB'"


def describe_value(value: object) -> str:
    """Render a user's value the way they would have written it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _duration_error(value: object) -> PydanticCustomError:
    return PydanticCustomError(
        "duration_parsing",
        "must be a duration ({hint}), got {value}",
        {"hint": _DURATION_HINT, "value": describe_value(value)},
    )


def parse_duration(value: object) -> float:
    """Seconds from a number or a unit string; exact for anything `format_duration` emits."""
    if isinstance(value, bool):
        raise _duration_error(value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _PLAIN_NUMBER.fullmatch(text):
            seconds = float(Fraction(text))
        elif _DURATION_RE.fullmatch(text):
            parts = _DURATION_PART.findall(text)
            seconds = float(sum((Fraction(n) * _DURATION_UNITS[u] for n, u in parts), Fraction(0)))
        else:
            raise _duration_error(value)
    else:
        raise _duration_error(value)
    if not math.isfinite(seconds):
        raise _duration_error(value)
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest single-unit spelling that parses back to exactly ``seconds``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    exact = Fraction(repr(seconds))  # the decimal the user would have typed
    for unit in ("d", "h", "m", "s", "ms"):
        count = exact / _DURATION_UNITS[unit]
        if count.denominator == 1:
            return f"{count.numerator}{unit}"
    return format(Decimal(repr(seconds)), "f") + "s"  # fixed point: no exponent to parse


def _size_error(value: object) -> PydanticCustomError:
    return PydanticCustomError(
        "size_parsing",
        "must be a size ({hint}), got {value}",
        {"hint": _SIZE_HINT, "value": describe_value(value)},
    )


def parse_byte_size(value: object) -> int:
    """Bytes from an int or a unit string; 'kB'/'MB' are powers of 1000, 'KiB'/'MiB' of 1024."""
    if isinstance(value, bool):
        raise _size_error(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _size_error(value)
    if not isinstance(value, str):
        raise _size_error(value)
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise _size_error(value)
    number, unit = match.groups()
    unit = unit.lower()
    if unit and not unit.endswith("b"):
        unit += "b"  # "10Mi" / "512k": the trailing B is optional
    multiplier = _SIZE_UNITS.get(unit or "b")
    if multiplier is None:
        raise _size_error(value)
    total = Fraction(number) * multiplier
    if total.denominator != 1:
        raise _size_error(value)
    return total.numerator


def format_byte_size(size: int) -> str:
    """The largest unit (IEC first, then SI) that spells ``size`` as a whole number."""
    if size < 0:
        raise ValueError(f"not a size: {size!r}")
    if size == 0:
        return "0B"
    for unit in ("PiB", "TiB", "GiB", "MiB", "KiB", "PB", "TB", "GB", "MB", "kB"):
        multiplier = _SIZE_UNITS[unit.lower()]
        if size % multiplier == 0:
            return f"{size // multiplier}{unit}"
    return f"{size}B"


def _schema(kind: str, pattern: str, hint: str) -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": kind, "minimum": 0},
            {"type": "string", "pattern": pattern},
        ],
        "description": hint,
    }


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=0),
    WithJsonSchema(
        _schema(
            "number",
            rf"^\s*[+-]?{_NUM}\s*$|{DURATION_PATTERN}",
            "Duration: " + _DURATION_HINT + ".",
        )
    ),
]
"""Seconds as a float; accepts numbers and strings like '500ms', '30s', '1h30m'."""

ByteSize = Annotated[
    int,
    BeforeValidator(parse_byte_size),
    Field(ge=0),
    WithJsonSchema(_schema("integer", SIZE_PATTERN, "Size: " + _SIZE_HINT + ".")),
]
"""Bytes as an int; accepts ints and strings like '512KiB', '10MiB', '1GB'."""
