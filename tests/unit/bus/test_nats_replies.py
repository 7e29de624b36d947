"""ReplyInbox: many requests answered on one wildcard subscription, with one sweep for timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from sampan.bus.base import BusError
from sampan.bus.nats_replies import ReplyInbox, ReplyTimeout

pytestmark = pytest.mark.nats

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def nc() -> AsyncIterator[NatsClient]:
    client = await nats.connect(NATS_URL)
    try:
        yield client
    finally:
        await client.close()


async def test_each_reply_resolves_its_own_future(nc: NatsClient) -> None:
    subject = nc.new_inbox()

    async def echo(msg: Msg) -> None:
        await nc.publish(msg.reply, b"re:" + msg.data)

    await nc.subscribe(subject, cb=echo)
    inbox = ReplyInbox(nc, timeout=5.0)
    await inbox.start()
    try:
        futures = []
        for i in range(300):
            reply, future = inbox.expect()
            futures.append(future)
            await nc.publish(subject, str(i).encode(), reply=reply)
        answers = await asyncio.gather(*futures)
        assert [a.data for a in answers] == [f"re:{i}".encode() for i in range(300)]
        assert inbox.pending == 0
    finally:
        await inbox.close()


async def test_an_unanswered_request_times_out_and_is_forgotten(nc: NatsClient) -> None:
    inbox = ReplyInbox(nc, timeout=0.2)
    await inbox.start()
    try:
        silent = nc.new_inbox()  # a listener that never answers (with none, NATS says 503)
        await nc.subscribe(silent)
        reply, future = inbox.expect()
        await nc.publish(silent, b"no answer", reply=reply)
        with pytest.raises(ReplyTimeout):
            await asyncio.wait_for(future, 5.0)
        assert inbox.pending == 0
    finally:
        await inbox.close()


async def test_close_fails_what_still_waits(nc: NatsClient) -> None:
    inbox = ReplyInbox(nc, timeout=30.0)
    await inbox.start()
    _, future = inbox.expect()
    await inbox.close()
    with pytest.raises(BusError, match="closed"):
        await future
    with pytest.raises(BusError, match="not started"):
        inbox.expect()
