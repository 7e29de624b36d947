"""FlowMessage: the payload stays bytes until read; ``arrived`` builds what the constructor
builds."""

from __future__ import annotations

from sampan.flows.message import FlowMessage
from sampan.flows.outbox import Outbox

SLOTS = FlowMessage.__slots__  # a slot added later and not set by `arrived` fails here


def test_arrived_is_the_constructed_message() -> None:
    outbox = Outbox()
    fast = FlowMessage.arrived(b'{"a": 1}', {"h": "v"}, "k", "orders@7", (outbox, 3))
    slow = FlowMessage(raw=b'{"a": 1}', headers={"h": "v"}, key="k", origin="orders@7")
    slow.outbox = (outbox, 3)
    assert type(fast) is FlowMessage
    assert [getattr(fast, name) for name in SLOTS] == [getattr(slow, name) for name in SLOTS]
    assert fast.undecoded
    assert fast.data == {"a": 1}
    assert fast.body() == b'{"a": 1}'  # not re-encoded: the payload was only read


def test_arrived_without_an_outbox() -> None:
    message = FlowMessage.arrived(b"text", {}, None, "t@0")
    assert message.outbox is None
    assert message.data == "text"
