"""The validate step's msgspec translation of a JSON Schema never accepts what the schema
rejects, and translates only what it takes on exactly."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import fastjsonschema
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sampan.flows.errors import InvalidMessage
from sampan.flows.message import FlowMessage
from sampan.flows.step import BuildContext
from sampan.flows.steps.schema_types import schema_type
from sampan.flows.steps.validate import ValidateOptions, ValidateStep

ORDER = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "order",
    "type": "object",
    "required": ["order_id", "amount", "items"],
    "additionalProperties": True,
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{3}$"},
        "amount": {"type": "integer", "minimum": 0},
        "currency": {"enum": ["VND", "USD"]},
        "note": {"type": ["string", "null"], "maxLength": 5},
        "rate": {"type": "number", "exclusiveMaximum": 1},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku"],
                "additionalProperties": False,
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            },
        },
    },
}


def accepts(kind: Any, value: Any) -> bool:
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError:
        return False
    return True


def schema_accepts(schema: Any, value: Any) -> bool:
    try:
        fastjsonschema.compile(schema)(value)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def test_an_order_schema_translates_and_judges_like_the_schema() -> None:
    kind = schema_type(ORDER)
    assert kind is not None
    good = {"order_id": "ORD-123", "amount": 5, "items": [{"sku": "a", "qty": 2}], "x": 1}
    assert accepts(kind, good)
    for bad in (
        {**good, "order_id": "ORD-123\n"},  # fastjsonschema's `$` means the very end
        {**good, "order_id": "ord-123"},
        {**good, "amount": -1},
        {**good, "amount": True},
        {**good, "currency": "EUR"},
        {**good, "note": "too long"},
        {**good, "rate": 1},
        {**good, "items": []},
        {**good, "items": [{"qty": 1}]},
        {**good, "items": [{"sku": "a", "extra": 1}]},
        {"amount": 5, "items": [{"sku": "a"}]},
        [good],
    ):
        assert not accepts(kind, bad), bad
        assert not schema_accepts(ORDER, bad), bad
    assert accepts(kind, {**good, "note": None, "rate": 0.5, "currency": "USD"})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": "email"},
        {"type": "object", "properties": {"a": {"type": "integer", "default": 1}}},
        {"$ref": "#/definitions/a", "definitions": {"a": {"type": "string"}}},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": ["string", "integer"]},
        {"type": "array", "items": [{"type": "string"}]},
        {"type": "array", "uniqueItems": True},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
        {"type": "number", "multipleOf": 0.1},
        {"type": "integer", "minimum": 0.5},
        {"type": "integer", "exclusiveMinimum": True, "minimum": 0},
        {"type": "number", "maximum": 2**60},
        {"type": "string", "pattern": "(unclosed"},
        {"enum": ["a", 1]},
        {"enum": [True]},
        {"type": "string", "enum": ["a"]},
        {"properties": {"a": {"type": "string"}}},
        False,
    ],
)
def test_what_is_not_taken_on_exactly_is_left_to_fastjsonschema(schema: Any) -> None:
    assert schema_type(schema) is None


# -- property: msgspec accepts => the schema accepts --------------------------------------------

SCALARS = st.sampled_from(["string", "integer", "number", "boolean", "null"])
NUMBERS = st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False))


@st.composite
def scalar_schemas(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(SCALARS)
    schema: dict[str, Any] = {"type": kind}
    if kind == "string":
        if draw(st.booleans()):
            schema["minLength"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            schema["maxLength"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            schema["pattern"] = draw(st.sampled_from(["^a", "b$", "^[a-c]+$", "a\\$", "[$]"]))
    elif kind in ("integer", "number"):
        for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if draw(st.booleans()):
                bound = draw(st.integers(-3, 3) if kind == "integer" else NUMBERS)
                schema[keyword] = bound
        if kind == "integer" and draw(st.booleans()):
            schema["multipleOf"] = draw(st.integers(1, 3))
    if kind != "null" and draw(st.integers(0, 4)) == 0:
        schema["type"] = [kind, "null"]
    return schema


def schemas() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        scalar_schemas(),
        st.just({}),
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(
            lambda v: {"enum": v}
        ),
        st.lists(st.integers(-2, 2), min_size=1, max_size=3).map(lambda v: {"enum": v}),
        st.sampled_from(["a", 1, 0]).map(lambda v: {"const": v}),
    )

    def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        arrays = st.builds(
            lambda items, lo, hi: {
                "type": "array",
                "items": items,
                **({"minItems": lo} if lo is not None else {}),
                **({"maxItems": hi} if hi is not None else {}),
            },
            inner,
            st.none() | st.integers(0, 2),
            st.none() | st.integers(0, 2),
        )
        objects = st.builds(
            lambda props, required, extra: {
                "type": "object",
                "properties": props,
                "required": sorted(set(required)),
                **({"additionalProperties": extra} if extra is not None else {}),
            },
            st.dictionaries(st.sampled_from(["a", "b", "c-d"]), inner, max_size=3),
            st.lists(st.sampled_from(["a", "b", "c-d", "e"]), max_size=3),
            st.none() | st.booleans(),
        )
        return arrays | objects

    return st.recursive(leaves, containers, max_leaves=6)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-4, 4)
    | st.floats(-4, 4, allow_nan=False)
    | st.sampled_from([2**60 + 1, 1.0, 0.0, -0.0, 3.0])
    | st.sampled_from(["", "a", "ab", "abc", "b", "b\n", "a$", "$", "ca", "abcd", "é"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c-d", "e"]), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schemas(), st.lists(JSON_VALUES, min_size=1, max_size=6))
def test_msgspec_never_accepts_what_the_schema_rejects(schema: Any, values: list[Any]) -> None:
    try:
        check = fastjsonschema.compile(schema)
    except (fastjsonschema.JsonSchemaDefinitionException, re.error):
        assume(False)  # the step refuses such a schema when the config loads
    kind = schema_type(schema)
    if kind is None:
        return
    for value in values:
        decoded = orjson.loads(orjson.dumps(value))  # as the step sees it: decoded JSON
        if accepts(kind, decoded):
            check(decoded)  # raises if the translation was looser than the schema


# -- the step ---------------------------------------------------------------------------------


def step_for(tmp_path: Path, schema: Any) -> ValidateStep:
    path = tmp_path / "schema.json"
    path.write_bytes(orjson.dumps(schema))
    options = ValidateOptions.model_validate({"schema": str(path)})
    context = cast(BuildContext, SimpleNamespace(label="steps[0].validate"))  # all it reads
    return ValidateStep(options, context)


def test_the_step_words_errors_as_fastjsonschema(tmp_path: Path) -> None:
    step = step_for(tmp_path, ORDER)
    assert step._fast is not None
    good = {"order_id": "ORD-123", "amount": 5, "items": [{"sku": "a"}]}
    assert step.process_now(FlowMessage(raw=orjson.dumps(good))) != []
    with pytest.raises(InvalidMessage, match=re.escape("data.amount must be bigger than or")):
        step.process_now(FlowMessage(raw=orjson.dumps({**good, "amount": -1})))


def test_a_stricter_translation_still_lets_a_valid_message_through(tmp_path: Path) -> None:
    step = step_for(tmp_path, {"type": "object", "properties": {"n": {"type": "integer"}}})
    assert step._fast is not None
    message = FlowMessage(raw=b'{"n": 1.0}')  # an integer to JSON Schema, a float to msgspec
    assert step.process_now(message) == [message]


def test_data_a_step_replaced_is_judged_by_fastjsonschema(tmp_path: Path) -> None:
    step = step_for(tmp_path, {"type": "array", "items": {"type": "integer"}})
    message = FlowMessage(raw=b"[1]")
    message.data = {1, 2}  # a set: msgspec would take it for an array, the schema does not
    with pytest.raises(InvalidMessage):
        step.process_now(message)


def test_defaults_are_still_written_into_the_payload(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 7}}}
    step = step_for(tmp_path, schema)
    assert step._fast is None
    message = FlowMessage(raw=b"{}")
    step.process_now(message)
    assert message.data == {"n": 7}
