"""new_delivery builds the same frozen Delivery as its constructor."""

from __future__ import annotations

import dataclasses

import pytest

from sampan.bus.base import Delivery
from sampan.bus.fast_delivery import new_delivery


def test_new_delivery_equals_the_constructed_one() -> None:
    args = ("t", "g", 7, "k", b"v", {"h": "1"}, 12.5, 2, 99)
    fast, slow = new_delivery(*args), Delivery(*args)
    assert type(fast) is Delivery
    assert fast == slow
    assert dataclasses.astuple(fast) == args
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.offset = 8  # type: ignore[misc]
