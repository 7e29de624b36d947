"""``{expr}`` templates (enrich paths, topic names): values, escaping, and nulls."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampan.flows.expressions import brace_renderer
from sampan.flows.message import FlowMessage


def message(data: Any, headers: dict[str, str] | None = None) -> FlowMessage:
    return FlowMessage(data, headers=headers or {}, key="k1")


def test_text_without_placeholders_is_constant() -> None:
    assert brace_renderer("orders.accepted")(message({})) == "orders.accepted"


def test_one_placeholder_with_text_around_it() -> None:
    fill = brace_renderer("/customers/{data.customer_id}/profile", url_quote=True)
    assert fill(message({"customer_id": "C-0042"})) == "/customers/C-0042/profile"


def test_several_placeholders_and_scalars() -> None:
    fill = brace_renderer('{headers."x-tier"}.{data.n}.{data.ok}.{key}')
    assert fill(message({"n": 7, "ok": True}, {"x-tier": "vip"})) == "vip.7.true.k1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a/b c", "a%2Fb%20c"),
        ("Hà Nội", "H%C3%A0%20N%E1%BB%99i"),
        ("..", ".."),
        ("~under_score-dash.dot", "~under_score-dash.dot"),
        ("?x=1&y#z", "%3Fx%3D1%26y%23z"),
        ("", ""),
    ],
)
def test_url_quote_escapes_everything_but_unreserved(value: str, expected: str) -> None:
    assert brace_renderer("/c/{data.id}", url_quote=True)(message({"id": value})) == (
        "/c/" + expected
    )


def test_without_url_quote_values_are_kept() -> None:
    fill = brace_renderer("/c/{data.id}")
    assert fill(message({"id": "a/b c"})) == "/c/a/b c"


def test_a_null_placeholder_is_an_error_naming_the_template() -> None:
    with pytest.raises(ValueError, match=r"/c/\{data.id\}"):
        brace_renderer("/c/{data.id}", url_quote=True)(message({}))
    with pytest.raises(ValueError, match="is null"):
        brace_renderer("{data.a}-{data.b}")(message({"a": 1}))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_url_quote_is_exactly_quote_with_nothing_safe(value: str) -> None:
    assert brace_renderer("{data.v}", url_quote=True)(message({"v": value})) == quote(
        value, safe=""
    )
