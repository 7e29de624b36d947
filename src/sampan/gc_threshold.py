"""How many allocations the garbage collector lets pass before it looks at the youngest
generation: a trade between throughput and pauses, left to the operator.

Python's 700 suits short scripts. A node at full load allocates a few containers per message
(deliveries, payload dicts, the rows the embedded bus keeps in memory) and holds hundreds of
messages at once, so every young collection walks the messages in flight, and survivors pile
up into frequent older collections: in the flows benchmark the collector took ~9 % of the
event loop's time (~280 young, ~25 middle and 2 full collections in a 2 s run). At 5,000 it
took ~5 % (~23 young collections, no full one) and the flow ran ~10 % faster in alternating
runs. But each collection then walks more at once: in the bus latency benchmark (10,000 msg/s)
young collections paused the loop up to ~9 ms and middle ones ~17 ms, against ~2 and ~4 ms at
700, and the p99 got worse. So a node keeps Python's value unless told otherwise
(``node.gc_young_threshold``): a throughput-bound flow node can raise it, a latency-bound
gateway or bus node should not.

Like the switch interval, this is one setting of the whole interpreter: the node holds it
while it runs (`sampan.held_setting`) and changes only the youngest generation's threshold.
"""

from __future__ import annotations

import gc

from sampan.held_setting import HeldSetting


class GcYoungThreshold(HeldSetting[int]):
    """``gc.set_threshold(allocations, <older thresholds as they are>)`` while the node runs."""

    def __init__(self, allocations: int | None) -> None:
        super().__init__(allocations, _read, _write)


def _read() -> int:
    return gc.get_threshold()[0]


def _write(allocations: int) -> None:
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(allocations, middle, oldest)
