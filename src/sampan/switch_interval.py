"""How long a busy event loop may keep the GIL from a thread that wants it back.

The embedded bus writes from its own thread, and every SQLite call it makes lets go of the
GIL and must take it back afterwards. While the event loop's thread runs Python (a flow
working through a batch, a burst of deliveries), a thread that wants the GIL back waits the
interpreter's switch interval — 5 ms by default — before the loop is made to yield. A commit
makes several such calls, so at full load the database thread spent most of its time waiting
for the GIL rather than working: 96-99 % of its wall time busy on 26-29 % CPU in the flows
benchmark. At 0.1 ms the same thread is ~70 % busy, and throughput rises (bus end-to-end
+35 %, flows +15 %; docs/benchmarks.md). Only threads that ask for the GIL are affected: a
process with one busy thread never switches.

The interval is one setting of the whole interpreter, so the node owns it: it sets it on start
and puts back what it found on stop, unless something else changed it meanwhile.
"""

from __future__ import annotations

import sys

DEFAULT_SWITCH_INTERVAL = 0.0001
"""Seconds. Measured 0.1 / 0.2 / 0.5 / 5 ms: 0.1 ms gave the best flows and bus throughput."""


class SwitchInterval:
    """Sets ``sys.setswitchinterval`` for as long as it is held, then restores the old value."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._previous: float | None = None
        self._applied: float | None = None

    def apply(self) -> None:
        if self.seconds is None or self._applied is not None:
            return
        self._previous = sys.getswitchinterval()
        sys.setswitchinterval(self.seconds)
        self._applied = sys.getswitchinterval()  # as the interpreter rounded it

    def restore(self) -> None:
        if self._applied is None or self._previous is None:
            return
        if sys.getswitchinterval() == self._applied:  # nobody changed it since
            sys.setswitchinterval(self._previous)
        self._applied = self._previous = None
