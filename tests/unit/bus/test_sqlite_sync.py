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
        statements: list[str] = []
        await bus._call(lambda s, now: s.conn.set_trace_callback(statements.append))
        await bus.publish_batch("t", [OutgoingMessage(b"y")])
        insert = next(i for i, sql in enumerate(statements) if sql.startswith("INSERT INTO"))
        switches = [sql for sql in statements[:insert] if sql.startswith("PRAGMA synchronous")]
        assert switches == ["PRAGMA synchronous=FULL"]  # before the publish's own commit
        assert statements.index(switches[0]) < statements.index("BEGIN IMMEDIATE")
        await bus._call(lambda s, now: s.conn.set_trace_callback(None))
        assert await synchronous(bus) == FULL
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
