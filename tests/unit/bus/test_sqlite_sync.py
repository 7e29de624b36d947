"""When the embedded bus fsyncs its commits (``SqliteBus._sync_for``, ``durability: full``):
every commit that publishes does; a run of commits that do not (acks, leases, reads) stops
doing so only once it is long, so that mixed traffic does not switch at every commit."""

from __future__ import annotations

from pathlib import Path

from sampan.bus.base import OutgoingMessage
from sampan.bus.sqlite import UNSYNCED_BEFORE_NORMAL, SqliteBus, SqliteBusOptions

FULL, NORMAL = 2, 1


async def synchronous(bus: SqliteBus) -> int:
    """The setting the database thread's connection has now (a commit without a publish)."""
    return int(await bus._call(lambda s, now: s.conn.execute("PRAGMA synchronous").fetchone()[0]))


async def test_a_publish_is_always_fsynced_and_only_a_long_quiet_run_is_not(
    tmp_path: Path,
) -> None:
    bus = SqliteBus(f"sqlite:///{tmp_path / 'bus.db'}", SqliteBusOptions(durability="full"))
    await bus.start()
    try:
        await bus.publish_batch("t", [OutgoingMessage(b"x")])
        for _ in range(UNSYNCED_BEFORE_NORMAL - 1):  # acks and leases between publishes
            assert await synchronous(bus) == FULL
        assert await synchronous(bus) == NORMAL  # the run is long: the connection is switched
        await bus.publish_batch("t", [OutgoingMessage(b"y")])
        assert await synchronous(bus) == FULL  # switched back for the publish
        assert [t.messages for t in await bus.topics()] == [2]
    finally:
        await bus.close()


async def test_durability_normal_never_fsyncs(tmp_path: Path) -> None:
    bus = SqliteBus(f"sqlite:///{tmp_path / 'bus.db'}", SqliteBusOptions(durability="normal"))
    await bus.start()
    try:
        await bus.publish_batch("t", [OutgoingMessage(b"x")])
        assert await synchronous(bus) == NORMAL
    finally:
        await bus.close()
