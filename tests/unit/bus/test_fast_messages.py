"""The fast constructors build the same frozen objects as the dataclass constructors."""

from __future__ import annotations

import dataclasses

import pytest

from sampan.bus.base import Delivery, OutgoingMessage
from sampan.bus.fast_messages import new_delivery, new_outgoing


def test_new_delivery_equals_the_constructed_one() -> None:
    args = ("t", "g", 7, "k", b"v", {"h": "1"}, 12.5, 2, 99)
    fast, slow = new_delivery(*args), Delivery(*args)
    assert type(fast) is Delivery
    assert fast == slow
    assert dataclasses.astuple(fast) == args
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.offset = 8  # type: ignore[misc]


@pytest.mark.parametrize("args", [(b"v", "k", {"h": "1"}, 1700000000.5), (b"", None, None, None)])
def test_new_outgoing_equals_the_constructed_one(args: tuple[object, ...]) -> None:
    fast, slow = new_outgoing(*args), OutgoingMessage(*args)  # type: ignore[arg-type]
    assert type(fast) is OutgoingMessage
    assert fast == slow
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    assert fast.dedupe_key is None and fast.dedupe_ttl == OutgoingMessage(b"").dedupe_ttl
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.key = "other"  # type: ignore[misc]
