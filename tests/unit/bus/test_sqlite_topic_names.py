"""Topic names: the longest allowed name still has room for its dead-letter topic."""

from __future__ import annotations

import pytest

from sampan.bus.base import BusError
from sampan.bus.sqlite_store import check_topic_name


def test_longest_topic_name_has_a_valid_dead_letter_name() -> None:
    longest = "x" * 200
    check_topic_name(longest)
    check_topic_name(longest + ".dlq")


@pytest.mark.parametrize("name", ["x" * 201, "x" * 197 + ".dlq.dlq", "x" * 201 + ".dlq"])
def test_names_past_the_limit_are_rejected(name: str) -> None:
    with pytest.raises(BusError, match="invalid topic name"):
        check_topic_name(name)
