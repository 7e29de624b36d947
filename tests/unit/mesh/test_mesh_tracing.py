"""W3C traceparent: continue the caller's trace with a new span, or start a trace."""

from __future__ import annotations

import pytest

from sampan.mesh.tracing import TRACEPARENT, next_traceparent

CALLER = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_continues_the_callers_trace_with_a_new_span() -> None:
    out = next_traceparent(CALLER)
    assert TRACEPARENT.match(out)
    assert out.startswith(b"00-0af7651916cd43dd8448eb211c80319c-")
    assert out.endswith(b"-01")
    assert out != CALLER


@pytest.mark.parametrize(
    "incoming",
    [
        None,
        b"garbage",
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
def test_starts_a_new_trace_when_there_is_no_valid_one(incoming: bytes | None) -> None:
    out = next_traceparent(incoming)
    assert TRACEPARENT.match(out)
    assert b"0af7651916cd43dd8448eb211c80319c" not in out or incoming is None


def test_ids_are_distinct() -> None:
    assert len({next_traceparent(None) for _ in range(1000)}) == 1000
