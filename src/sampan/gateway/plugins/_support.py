"""Small pieces several plugins share: validated header names, re2, throttled logs, JSON paths."""

from __future__ import annotations

import importlib
import logging
import re
import time
from typing import Annotated, Any, Final

from pydantic import AfterValidator

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"not a valid HTTP header name: {value!r}")
    return value.lower()


def _header_value(value: str) -> str:
    if _BAD_VALUE.search(value):
        raise ValueError("header values may not contain control characters (CR, LF, NUL...)")
    if value != value.strip(" \t"):
        raise ValueError("header values may not start or end with whitespace")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]
"""A header field name (token), lowercased."""
HeaderValue = Annotated[str, AfterValidator(_header_value)]
"""A header field value without control characters."""


def is_token(value: bytes) -> bool:
    return _TOKEN.fullmatch(value.decode("latin-1")) is not None


def safe_header_value(value: str) -> bytes | None:
    """``value`` as header bytes (UTF-8), or None when it could inject a header or a line."""
    if _BAD_VALUE.search(value):
        return None
    return value.strip(" \t").encode()


def re2_compile(pattern: str) -> Any:
    """Compile with RE2 (linear time, no backtracking): patterns from config are untrusted
    enough that a catastrophic-backtracking regex must not take a node down."""
    module: Any = importlib.import_module("re2")
    return module.compile(pattern)


def check_re2(pattern: str) -> str:
    try:
        re2_compile(pattern)
    except Exception as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


Re2Pattern = Annotated[str, AfterValidator(check_re2)]


def is_json(content_type: bytes | None) -> bool:
    """``application/json``, ``application/problem+json``, ``...; charset=utf-8``."""
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def content_length(raw: bytes | None) -> int | None:
    if raw is None or not raw.isdigit():
        return None
    return int(raw)


class ThrottledLog:
    """Logs at most one line per ``interval`` seconds, counting what it held back.

    For failures that hit every request (Redis down): one line per request would drown the
    log and cost more than the request itself.
    """

    __slots__ = ("_interval", "_last", "_log", "_suppressed")

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self._interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> bool:
        """Log now (returns True) or count the line as suppressed."""
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return False
        self._last = now
        if self._suppressed:
            self._log.warning(
                message + " (%d similar messages suppressed)", *args, self._suppressed
            )
        else:
            self._log.warning(message, *args)
        self._suppressed = 0
        return True


# ---------------------------------------------------------------------- dotted JSON paths
# "a.b.c" addresses obj["a"]["b"]["c"]; only objects are walked (no list indices). Paths
# are split once at construction, so the hot path only walks tuples.

JsonPath = tuple[str, ...]


def _json_path(value: str) -> str:
    parts = value.split(".")
    if not value or any(not p for p in parts):
        raise ValueError(f"not a dotted path (a.b.c with non-empty parts): {value!r}")
    return value


DottedPath = Annotated[str, AfterValidator(_json_path)]


def split_path(path: str) -> JsonPath:
    return tuple(path.split("."))


def _parent(doc: dict[str, Any], path: JsonPath, create: bool) -> dict[str, Any] | None:
    node: Any = doc
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if not create:
                return None
            child = {}
            node[part] = child
        node = child
    return node if isinstance(node, dict) else None


def json_remove(doc: dict[str, Any], path: JsonPath) -> Any:
    parent = _parent(doc, path, create=False)
    if parent is None:
        return _ABSENT
    return parent.pop(path[-1], _ABSENT)


def json_set(doc: dict[str, Any], path: JsonPath, value: Any, *, only_if_absent: bool) -> None:
    parent = _parent(doc, path, create=True)
    if parent is None:  # pragma: no cover - _parent creates objects on the way
        return
    if only_if_absent and path[-1] in parent:
        return
    parent[path[-1]] = value


def json_rename(doc: dict[str, Any], old: JsonPath, new: JsonPath) -> None:
    value = json_remove(doc, old)
    if value is not _ABSENT:
        json_set(doc, new, value, only_if_absent=False)


class _Absent:
    __slots__ = ()


_ABSENT: Final = _Absent()


def compiled_front() -> Any | None:
    """The gateway's compiled module (``sampan.http._fastpath``), or None when not built."""
    try:
        return importlib.import_module("sampan.http._fastpath")
    except ImportError:  # pragma: no cover - the package build compiles it
        return None
