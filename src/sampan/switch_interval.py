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

The interval is one setting of the whole interpreter, so the node holds it while it runs
(`sampan.held_setting`).
"""

from __future__ import annotations

import sys

from sampan.held_setting import HeldSetting

DEFAULT_SWITCH_INTERVAL = 0.0001
"""Seconds. Measured 0.1 / 0.2 / 0.5 / 5 ms: 0.1 ms gave the best flows and bus throughput."""


class SwitchInterval(HeldSetting[float]):
    """``sys.setswitchinterval`` for as long as the node runs."""

    def __init__(self, seconds: float | None) -> None:
        super().__init__(seconds, sys.getswitchinterval, sys.setswitchinterval)
