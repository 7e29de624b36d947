"""The operations request-transformer and response-transformer share, compiled once.

Each group runs in a fixed order: remove, rename, set, add (``set`` replaces or creates;
``add`` only creates, never overwrites what the client or upstream sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import orjson
from pydantic import Field, field_validator

from sampan.gateway.plugins._support import (
    DottedPath,
    HeaderName,
    HeaderValue,
    JsonPath,
    json_remove,
    json_rename,
    json_set,
    split_path,
)
from sampan.gateway.plugins.base import PluginOptions
from sampan.http.headers import Headers

_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def _no_framing(names: Any) -> Any:
    for name in names:
        if name in _FRAMING:
            raise ValueError(f"{name} is managed by the gateway and cannot be transformed")
    return names


class HeaderOps(PluginOptions):
    remove: list[HeaderName] = Field(default_factory=list, description="Headers to drop.")
    rename: dict[HeaderName, HeaderName] = Field(
        default_factory=dict, description="Old name -> new name (every occurrence)."
    )
    set: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, description="Name -> value, replacing any present."
    )
    add: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, description="Name -> value, only when the header is absent."
    )

    @field_validator("remove", "rename", "set", "add")
    @classmethod
    def _framing(cls, value: Any) -> Any:
        _no_framing(value)
        if isinstance(value, dict):
            _no_framing(value.values())
        return value


class QueryOps(PluginOptions):
    remove: list[str] = Field(default_factory=list, description="Parameters to drop.")
    set: dict[str, str] = Field(
        default_factory=dict, description="Name -> value, replacing any present."
    )
    add: dict[str, str] = Field(
        default_factory=dict, description="Name -> value, only when the parameter is absent."
    )


class BodyOps(PluginOptions):
    remove: list[DottedPath] = Field(
        default_factory=list, description="Dotted paths (`a.b.c`) of JSON fields to drop."
    )
    rename: dict[DottedPath, DottedPath] = Field(
        default_factory=dict, description="Old path -> new path."
    )
    set: dict[DottedPath, Any] = Field(
        default_factory=dict,
        description="Path -> any JSON value, replacing or creating (objects on the way are "
        "created).",
    )
    add: dict[DottedPath, Any] = Field(
        default_factory=dict, description="Path -> any JSON value, only when absent."
    )


class HeaderTransform:
    __slots__ = ("_add", "_drop", "_empty", "_rename", "_set")

    def __init__(self, ops: HeaderOps) -> None:
        self._drop = frozenset(n.encode() for n in [*ops.remove, *ops.set])
        self._rename = {old.encode(): new.encode() for old, new in ops.rename.items()}
        self._set = [(n.encode(), v.encode()) for n, v in ops.set.items()]
        self._add = [(n.encode(), v.encode()) for n, v in ops.add.items()]
        self._empty = not (self._drop or self._rename or self._add)

    def apply(self, headers: Headers) -> None:
        if self._empty:
            return
        items = headers.items
        if self._drop:
            drop = self._drop
            items = [kv for kv in items if kv[0] not in drop]
        if self._rename:
            rename = self._rename
            items = [(rename.get(k, k), v) for k, v in items]
        items.extend(self._set)
        if self._add:
            present = {k for k, _ in items}
            items.extend(kv for kv in self._add if kv[0] not in present)
        headers.items = items


class QueryTransform:
    __slots__ = ("_add", "_drop", "_set", "empty")

    def __init__(self, ops: QueryOps) -> None:
        self._drop = frozenset([*ops.remove, *ops.set])
        self._set = [_pair(n, v) for n, v in ops.set.items()]
        self._add = [(n, _pair(n, v)) for n, v in ops.add.items()]
        self.empty = not (self._drop or self._add)

    def apply(self, query: bytes) -> bytes:
        pairs = [p for p in query.split(b"&") if p] if query else []
        names = [unquote_plus(p.partition(b"=")[0].decode("latin-1")) for p in pairs]
        kept = [p for p, n in zip(pairs, names, strict=True) if n not in self._drop]
        kept.extend(self._set)
        if self._add:
            present = set(names) - self._drop
            kept.extend(pair for name, pair in self._add if name not in present)
        return b"&".join(kept)


def _pair(name: str, value: str) -> bytes:
    return f"{quote_plus(name)}={quote_plus(value)}".encode()


class BodyTransform:
    __slots__ = ("_add", "_remove", "_rename", "_set", "empty")

    def __init__(self, ops: BodyOps) -> None:
        self._remove = [split_path(p) for p in ops.remove]
        self._rename = [(split_path(a), split_path(b)) for a, b in ops.rename.items()]
        self._set: list[tuple[JsonPath, Any]] = [(split_path(p), v) for p, v in ops.set.items()]
        self._add: list[tuple[JsonPath, Any]] = [(split_path(p), v) for p, v in ops.add.items()]
        self.empty = not (self._remove or self._rename or self._set or self._add)

    def apply(self, data: bytes) -> bytes | None:
        """The transformed document, or None when ``data`` is not a JSON object (raises
        ``orjson.JSONDecodeError`` when it is not JSON at all)."""
        doc = orjson.loads(data)
        if not isinstance(doc, dict):
            return None
        for path in self._remove:
            json_remove(doc, path)
        for old, new in self._rename:
            json_rename(doc, old, new)
        for path, value in self._set:
            json_set(doc, path, _copy(value), only_if_absent=False)
        for path, value in self._add:
            json_set(doc, path, _copy(value), only_if_absent=True)
        return orjson.dumps(doc)


def _copy(value: Any) -> Any:
    """Config values are shared by every request: never hand out the same dict/list."""
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
