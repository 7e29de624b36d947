"""Header lists as the wire has them: ordered ``(name, value)`` byte pairs, names lowercased.

Bytes, not str, because the proxy path mostly copies headers through untouched; decoding
every header of every request would cost more than the lookups it would save.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class Headers:
    __slots__ = ("items",)

    def __init__(self, items: Iterable[tuple[bytes, bytes]] | None = None) -> None:
        # Names must already be lowercase; the server and client parsers guarantee it.
        self.items: list[tuple[bytes, bytes]] = list(items) if items is not None else []

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        for key, value in self.items:
            if key == name:
                return value
        return default

    def get_str(self, name: bytes, default: str | None = None) -> str | None:
        value = self.get(name)
        return default if value is None else value.decode("latin-1")

    def get_all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.items if key == name]

    def add(self, name: bytes, value: bytes) -> None:
        self.items.append((name, value))

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every header of that name with one."""
        self.items = [(k, v) for k, v in self.items if k != name]
        self.items.append((name, value))

    def remove(self, name: bytes) -> None:
        self.items = [(k, v) for k, v in self.items if k != name]

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.items)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def copy(self) -> Headers:
        return Headers(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"
