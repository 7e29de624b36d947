"""The newest messages this process published, kept in memory per topic (embedded backend).

Groups consumed in the process that published usually read exactly what was just written;
handing them the rows the publish already built spares reading 1 KiB blobs back from SQLite.
Messages published by other processes, and anything evicted, are read from the database.

Rows are kept as the committed chunks they were inserted in (consecutive offsets), so adding
and reading cost a few operations per chunk, not per message.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

# (offset, key, value, headers, published_at, deliver_at, target_group, size) as inserted.
Row = tuple[int, str | None, bytes, bytes | None, float, float | None, int | None, int]

MAX_BYTES = 32 * 1024 * 1024
MAX_ROWS = 65_536


class TailCache:
    """Chunks of consecutive rows of one topic, oldest first; the oldest go past a bound."""

    def __init__(self, max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._starts: deque[int] = deque()
        self._chunks: deque[list[Row]] = deque()
        self._rows = 0
        self._bytes = 0
        self.last = -1
        """The highest offset ever added: below it, a missing offset is another process's."""
        self._unbroken_from = 0
        """Where the newest run of consecutive offsets began: from there to ``last`` no other
        process wrote."""

    def add(self, rows: list[Row], size: int) -> None:
        """Add consecutive rows (``size`` bytes of values) newer than everything held."""
        if not rows:
            return
        first = rows[0][0]
        if first <= self.last:  # out of order (never expected): start over from here
            self._starts.clear()
            self._chunks.clear()
            self._rows = self._bytes = 0
        if first != self.last + 1 or not self._chunks:
            self._unbroken_from = first
        self._starts.append(first)
        self._chunks.append(rows)
        self._rows += len(rows)
        self._bytes += size
        self.last = rows[-1][0]
        while len(self._chunks) > 1 and (
            self._rows > self.max_rows or self._bytes > self.max_bytes
        ):
            self._starts.popleft()
            old = self._chunks.popleft()
            self._rows -= len(old)
            self._bytes -= sum(r[7] for r in old)

    def holds_all_from(self, offset: int) -> bool:
        """Whether every offset from ``offset`` to ``last`` is held: then the file has
        nothing there that this cache lacks (only, perhaps, rows after ``last``)."""
        starts = self._starts
        return bool(starts) and max(starts[0], self._unbroken_from) <= offset <= self.last + 1

    def read(self, offset: int, limit: int) -> list[Row]:
        """Up to ``limit`` consecutive rows from ``offset`` on (empty if it is not held)."""
        starts = self._starts
        if not starts or offset < starts[0] or offset > self.last:
            return []
        i = bisect_right(starts, offset) - 1
        out: list[Row] = []
        chunks = self._chunks
        while i < len(chunks) and len(out) < limit:
            chunk = chunks[i]
            lo = offset - starts[i]
            if lo >= len(chunk):
                break  # a gap: another process wrote the next offsets
            piece = chunk[lo : lo + limit - len(out)]
            out.extend(piece)
            offset += len(piece)
            i += 1
            if i < len(chunks) and starts[i] != offset:
                break
        return out

    def __len__(self) -> int:
        return self._rows
