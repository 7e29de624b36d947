"""An interpreter-wide setting that a node holds while it runs.

Some settings that matter for throughput (the GIL switch interval, the garbage collector's
thresholds) belong to the whole interpreter, not to a node. The node sets them on start and
puts back what it found on stop, unless something else changed them meanwhile; ``None`` leaves
the interpreter's own value alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class HeldSetting(Generic[T]):
    def __init__(self, value: T | None, read: Callable[[], T], write: Callable[[T], None]) -> None:
        self.value = value
        self._read = read
        self._write = write
        self._previous: T | None = None
        self._applied: T | None = None

    def apply(self) -> None:
        if self.value is None or self._applied is not None:
            return
        self._previous = self._read()
        self._write(self.value)
        self._applied = self._read()  # as the interpreter took it (it may round)

    def restore(self) -> None:
        if self._applied is None or self._previous is None:
            return
        if self._read() == self._applied:  # nobody changed it since
            self._write(self._previous)
        self._applied = self._previous = None
