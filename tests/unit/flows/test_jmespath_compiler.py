"""The compiled JMESPath closures give what the jmespath interpreter gives, node for node."""

from __future__ import annotations

import json
from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampan.flows.expressions import evaluator, searcher
from sampan.flows.jmespath_codegen import generate
from sampan.flows.jmespath_compiler import compile_node
from sampan.flows.message import _UNDECODED, FlowMessage

OPTIONS = jmespath.Options(dict_cls=dict)

EXPRESSIONS = [
    "a",
    "a.b",
    "a.b.c",
    "{x: a, y: b}",
    "b.{c: c, missing: d}",
    "a.b.c.d",
    "[a, b]",
    "{x: a, y: b.c, z: `1`}",
    "items[*].{sku: sku, qty: qty}",
    "items[].sku",
    "items[*].sku",
    "items[0]",
    "items[-1].qty",
    "items[5]",
    "items[?qty > `1`].sku",
    "items[?sku == 'A'] | [0]",
    "nested[]",
    "nested[][]",
    "obj.*",
    "obj.*.v",
    "a > `10`",
    "a >= `10`",
    "a < b",
    "a <= `2.5`",
    "a == `0`",
    "a != `false`",
    "flag == `true`",
    "a == b",
    "a || b",
    "a && b",
    "!a",
    "!flag",
    "!zero",
    '`"lit"`',
    "'raw'",
    "@",
    "a.b | c",
    "{a: a, n: {b: b}}.n.b",
    "items[*].[sku, qty]",
    "{a: a.b.c, l: items[*].{sku: sku}, p: items[0].sku, f: items[?qty > `1`].sku}",
    "items[*].{s: sku, n: `1`, w: @}.s",
    "nested[*][*]",
    "{l: [a, b.c], m: {n: a} | n, o: obj.*.v}",
    "a.b | {x: c, y: d}",
]

DOCUMENTS: list[Any] = [
    None,
    {},
    [],
    "text",
    0,
    {"a": 11, "b": {"c": 3}, "flag": True, "zero": 0},
    {"a": 0, "b": 0, "flag": False, "zero": 0.0},
    {"a": 1, "b": True},
    {"a": "", "b": [], "obj": {"k": {"v": 1}, "j": {"w": 2}, "z": {"v": None}}},
    {"a": "abc", "b": "abd", "items": "not a list"},
    {
        "a": {"b": {"c": {"d": "deep"}}},
        "items": [
            {"sku": "A", "qty": 2},
            {"sku": "B", "qty": 1},
            {"sku": None, "qty": 3},
            "scalar",
            [1, 2],
        ],
        "nested": [[1, [2, 3]], 4, [], None],
    },
    {"a": [1, 2], "b": {"x": 1}, "obj": [1, 2]},
]


GENERATED = [text for text in EXPRESSIONS if generate(jmespath.compile(text).parsed) is not None]


def test_selections_are_generated_and_the_rest_is_not() -> None:
    assert "items[*].{sku: sku, qty: qty}" in GENERATED
    assert "{a: a.b.c, l: items[*].{sku: sku}, p: items[0].sku, f: items[?qty > `1`].sku}" in (
        GENERATED
    )
    assert {"a > `10`", "a < b", "a == b", "a || b", "a && b", "!a"} <= set(GENERATED)
    assert len(GENERATED) >= 25
    for plain in ("a.b.c", "items[0]", "`1`", "@"):
        assert generate(jmespath.compile(plain).parsed) is None  # one closure is as fast


COMPILED = [("closures", text) for text in EXPRESSIONS] + [
    ("generated", text) for text in GENERATED
]


def compiled_by(how: str, text: str) -> Any:
    """The expression as the closures or as one generated function."""
    node = jmespath.compile(text).parsed
    compiled = compile_node(node) if how == "closures" else generate(node)
    assert compiled is not None, (how, text)
    return compiled


@pytest.mark.parametrize(("how", "text"), COMPILED)
def test_compiled_matches_the_interpreter(how: str, text: str) -> None:
    parsed = jmespath.compile(text)
    compiled = compiled_by(how, text)
    for document in DOCUMENTS:
        try:
            expected: Any = ("ok", parsed.search(document, OPTIONS))
        except TypeError:
            expected = ("raises", None)
        try:
            actual: Any = ("ok", compiled(document))
        except TypeError:
            actual = ("raises", None)
        assert actual == expected, (text, document)
        assert type(actual[1]) is type(expected[1]), (text, document)


def test_names_and_literals_never_become_source() -> None:
    """Quoted identifiers may hold any text: it is bound as a value, never written as code."""
    hostile = 'x"); import os; ("'
    name, newline, quote = (json.dumps(n) for n in (hostile, "a\nb", 'q"'))
    text = f'{{{name}: {name}, {newline}: `"__import__(\\"os\\")"`, {quote}: items[*].{name}}}'
    parsed = jmespath.compile(text)
    generated = generate(parsed.parsed)
    assert generated is not None
    document = {hostile: 1, "items": [{hostile: 2}, {}, {hostile: None}, "s"]}
    assert generated(document) == parsed.search(document, OPTIONS)
    assert generated(document) == {hostile: 1, "a\nb": '__import__("os")', 'q"': [2]}
    assert hostile not in generated.__code__.co_consts


def test_nesting_too_deep_for_one_function_falls_back_to_the_closures() -> None:
    text = "a" + "[*].a" * 30
    document: Any = 1
    for _ in range(31):
        document = {"a": [document]}
    document = document["a"][0]
    parsed = jmespath.compile(text)
    assert generate(parsed.parsed) is None  # Python allows 20 nested blocks
    assert searcher(text)(document) == parsed.search(document, OPTIONS)


@pytest.mark.parametrize("text", ["length(a)", "a[1:2]", "sort_by(items, &qty)"])
def test_what_is_not_compiled_falls_back_to_the_interpreter(text: str) -> None:
    assert compile_node(jmespath.compile(text).parsed) is None
    search = searcher(text)
    assert search({"a": [1, 2, 3], "items": [{"qty": 2}, {"qty": 1}]}) == jmespath.search(
        text, {"a": [1, 2, 3], "items": [{"qty": 2}, {"qty": 1}]}, OPTIONS
    )


MESSAGE_EXPRESSIONS = [
    "data",
    "headers",
    "key",
    "other",
    "data.amount > `10`",
    'headers."x-tier"',
    "headers.missing",
    "key == 'C1'",
    '{id: data.id, tier: headers."x-tier", k: key}',
    "data.items[*].sku",
    "other.thing",
    "length(headers)",
    "@",
    "@.key",
    "[data.amount, key]",
    "data.items[?sku == 'A'].sku",
    "!key",
    "key || 'none'",
    "{k: @.key, n: `1`}",
    "[0]",
    "*",
    "data.amount > `10` && headers.\"x-tier\" == 'vip'",
    "data.amount",
    "data.nested.deep",
    "data.nested.deep.value",
    "{a: data.amount, skus: data.items[*].sku, whole: data, deep: data.nested.deep.value}",
    "{d: data, h: headers}",
    '{id: data.id, tier: headers."x-tier"}',
    "{first: data[0], amount: data.amount}",
    "{o: other.x, p: other}",
    "{one: data.id}",
    "key || data.amount",
    "headers.missing || {a: data.amount, k: key}",
    "data.amount > `10` || data.amount < `2`",
    "!(data.amount >= `3`) && data.id != `7`",
    "data.amount > headers.missing",
    "data.amount <= `12.5`",
    "key < 'C2'",
    "{big: data.amount > `5`, id: data.id == `7`, no: !data.id}",
]


@pytest.mark.parametrize("text", MESSAGE_EXPRESSIONS)
def test_message_evaluator_matches_searching_the_context(text: str) -> None:
    evaluate = evaluator(text)
    for data, headers, key in (
        ({"id": 7, "amount": 12, "items": [{"sku": "A"}, {"sku": "B"}]}, {"x-tier": "vip"}, "C1"),
        ({"amount": 1, "nested": {"deep": {"value": 9}}}, {}, "C3"),
        ({"nested": {"deep": "not an object"}, "items": "not a list"}, {}, None),
        ({"nested": [1], "amount": None}, {}, None),
        ({"amount": 3, "items": []}, {}, None),
        ("text payload", {"x-tier": "std"}, "C2"),
        ([1, 2], {}, ""),
    ):
        message = FlowMessage(data, headers=dict(headers), key=key)
        context = {"data": data, "headers": headers, "key": key}
        assert evaluate(message) == jmespath.search(text, context, OPTIONS), (text, data)


def test_a_header_expression_does_not_decode_the_payload() -> None:
    message = FlowMessage(raw=b'{"a": 1}', headers={"x-tier": "vip"}, key="k")
    assert evaluator('headers."x-tier"')(message) == "vip"
    assert evaluator("key")(message) == "k"
    assert message._data is _UNDECODED
    assert evaluator("headers.\"x-tier\" == 'std' && data.a > `0`")(message) is False
    assert evaluator("key || data.a")(message) == "k"
    assert message._data is _UNDECODED  # the right side of && and || runs only when needed
    assert evaluator("data.a > `0`")(message) is True
    assert message._data == {"a": 1}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "a", "b"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "items"]), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None)
@given(document=json_values, case=st.sampled_from(COMPILED))
def test_compiled_matches_on_random_documents(document: Any, case: tuple[str, str]) -> None:
    how, text = case
    parsed = jmespath.compile(text)
    compiled = compiled_by(how, text)
    try:
        expected: Any = parsed.search(document, OPTIONS)
    except TypeError:
        with pytest.raises(TypeError):
            compiled(document)
        return
    assert compiled(document) == expected


message_data = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "a", "b"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "amount", "items", "nested", "deep", "value", "sku", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=14,
)


@settings(max_examples=400, deadline=None)
@given(
    data=message_data,
    tier=st.none() | st.sampled_from(["vip", "std"]),
    key=st.none() | st.sampled_from(["", "C1"]),
    text=st.sampled_from(MESSAGE_EXPRESSIONS),
)
def test_message_evaluator_matches_on_random_payloads(
    data: Any, tier: str | None, key: str | None, text: str
) -> None:
    headers = {} if tier is None else {"x-tier": tier}
    context = {"data": data, "headers": headers, "key": key}
    try:
        expected: Any = jmespath.search(text, context, OPTIONS)
    except TypeError:
        with pytest.raises(TypeError):
            evaluator(text)(FlowMessage(data, headers=dict(headers), key=key))
        return
    assert evaluator(text)(FlowMessage(data, headers=dict(headers), key=key)) == expected
