"""A JSON Schema, where it can be, as a msgspec type: the validate step's check in C.

fastjsonschema generates Python that walks the payload; ``msgspec.convert`` checks the same
payload against a type in C, about half the validate step's time in a flow (10.5 -> 5.3 µs a
message, docs/benchmarks.md). The translation may only ever be stricter than the schema, never
looser, so:

* only keywords whose meaning msgspec shares exactly are translated, and a schema with any
  other keyword anywhere (``format``, ``$ref``, ``anyOf``, ``default`` — which fastjsonschema
  writes into the payload —, ...) is not translated at all;
* patterns get the rewrite fastjsonschema applies (an unescaped ``$`` becomes ``\\Z``), and
  both then run Python's ``re.search``;
* the type is only used on JSON as orjson decoded it (dict, list, str, int, float, bool,
  None): msgspec would take a set where the schema wants an array, a Decimal for a number;
* whatever msgspec rejects is checked again by fastjsonschema, which has the last word and
  words the error: a translation stricter than the schema (``1.0`` for an integer, say) costs
  time, never a valid message.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

ANNOTATIONS = frozenset(
    {"$schema", "$id", "id", "title", "description", "$comment", "examples", "deprecated"}
)
"""Keywords that describe and never constrain."""

_KEYWORDS = {
    "string": frozenset({"type", "minLength", "maxLength", "pattern"}),
    "integer": frozenset(
        {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    ),
    "number": frozenset({"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
    "boolean": frozenset({"type"}),
    "null": frozenset({"type"}),
    "array": frozenset({"type", "items", "minItems", "maxItems"}),
    "object": frozenset({"type", "properties", "required", "additionalProperties"}),
}

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
"""fastjsonschema's own rewrite of patterns (ECMA's ``$`` does not match before a final
newline; Python's does)."""


_EXACT = 2**53
"""Bounds below this compare the same as floats (msgspec) and as Python numbers (the schema):
every integer up to it is a float exactly, and rounding a larger one cannot cross it."""


class Untranslatable(Exception):
    """The schema uses something the translation does not take on exactly."""


def schema_type(schema: Any) -> Any | None:
    """The msgspec type for ``schema``, or None when only fastjsonschema may judge it."""
    try:
        translated = _Translator().translate(schema)
        msgspec.convert(None, translated | None)  # builds every nested type once, here
    except (Untranslatable, TypeError, ValueError):
        return None
    return translated


class _Translator:
    def __init__(self) -> None:
        self._structs = 0

    def translate(self, node: Any) -> Any:
        if node is True:
            return Any
        if not isinstance(node, dict):
            raise Untranslatable(f"schema {node!r}")
        node = {k: v for k, v in node.items() if k not in ANNOTATIONS}
        if not node:
            return Any
        if "enum" in node or "const" in node:
            return self._literal(node)
        kind = node.get("type")
        nullable = False
        if isinstance(kind, list):
            rest = [k for k in kind if k != "null"]
            if len(kind) != 2 or len(rest) != 1:
                raise Untranslatable(f"type {kind!r}")
            kind, nullable = rest[0], True
        if not isinstance(kind, str) or kind not in _KEYWORDS:
            raise Untranslatable(f"type {kind!r}")
        if not node.keys() <= _KEYWORDS[kind]:
            raise Untranslatable(f"keywords {sorted(node.keys() - _KEYWORDS[kind])}")
        translated = getattr(self, "_" + kind)(node)
        return translated | None if nullable else translated

    @staticmethod
    def _literal(node: dict[str, Any]) -> Any:
        if node.keys() - {"enum", "const"} or len(node) != 1:
            raise Untranslatable("enum or const with other keywords")
        values = node["enum"] if "enum" in node else [node["const"]]
        if not isinstance(values, list) or not values:
            raise Untranslatable("enum")
        if all(isinstance(v, str) for v in values) or all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            return Literal[tuple(values)]
        raise Untranslatable("enum values other than all strings or all integers")

    @staticmethod
    def _string(node: dict[str, Any]) -> Any:
        meta: dict[str, Any] = {}
        for keyword, name in (("minLength", "min_length"), ("maxLength", "max_length")):
            if keyword in node:
                meta[name] = _count(node[keyword], keyword)
        if "pattern" in node:
            pattern = node["pattern"]
            if not isinstance(pattern, str):
                raise Untranslatable("pattern")
            fixed = _UNESCAPED_DOLLAR.sub(r"\\Z", pattern)
            try:
                re.compile(fixed)
            except re.error as exc:
                raise Untranslatable(f"pattern: {exc}") from None
            meta["pattern"] = fixed
        return Annotated[str, msgspec.Meta(**meta)] if meta else str

    @staticmethod
    def _integer(node: dict[str, Any]) -> Any:
        meta = _bounds(node, integral=True)
        if "multipleOf" in node:
            step = node["multipleOf"]
            if not isinstance(step, int) or isinstance(step, bool) or step <= 0:
                raise Untranslatable("multipleOf")
            meta["multiple_of"] = step
        return Annotated[int, msgspec.Meta(**meta)] if meta else int

    @staticmethod
    def _number(node: dict[str, Any]) -> Any:
        meta = _bounds(node, integral=False)
        return Annotated[float, msgspec.Meta(**meta)] if meta else float

    @staticmethod
    def _boolean(node: dict[str, Any]) -> Any:
        return bool

    @staticmethod
    def _null(node: dict[str, Any]) -> Any:
        return None

    def _array(self, node: dict[str, Any]) -> Any:
        items = node.get("items", True)
        if isinstance(items, list):
            raise Untranslatable("items as a list")
        element = self.translate(items)
        meta: dict[str, Any] = {}
        for keyword, name in (("minItems", "min_length"), ("maxItems", "max_length")):
            if keyword in node:
                meta[name] = _count(node[keyword], keyword)
        array = list[element]  # type: ignore[valid-type]
        return Annotated[array, msgspec.Meta(**meta)] if meta else array

    def _object(self, node: dict[str, Any]) -> Any:
        properties = node.get("properties", {})
        required = node.get("required", [])
        extra = node.get("additionalProperties", True)
        if extra == {}:
            extra = True
        if not isinstance(properties, dict) or not isinstance(extra, bool):
            raise Untranslatable("properties or additionalProperties")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise Untranslatable("required")
        if len(set(required)) != len(required):
            raise Untranslatable("required names a property twice")
        if not properties and not required:
            if not extra:
                raise Untranslatable("an object with no properties allowed")
            return dict[str, Any]
        fields: list[Any] = []
        names = list(properties) + [r for r in required if r not in properties]
        for index, name in enumerate(names):
            value = self.translate(properties[name]) if name in properties else Any
            if name in required:
                fields.append((f"f{index}", value, msgspec.field(name=name)))
            else:
                fields.append((f"f{index}", value, msgspec.field(name=name, default=None)))
        self._structs += 1
        return msgspec.defstruct(
            f"Schema{self._structs}", fields, kw_only=True, forbid_unknown_fields=not extra
        )


def _count(value: Any, keyword: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Untranslatable(keyword)
    return value


def _bounds(node: dict[str, Any], *, integral: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for keyword, name in (
        ("minimum", "ge"),
        ("maximum", "le"),
        ("exclusiveMinimum", "gt"),
        ("exclusiveMaximum", "lt"),
    ):
        if keyword not in node:
            continue
        bound = node[keyword]
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise Untranslatable(keyword)  # draft 4's boolean exclusiveMinimum among others
        if integral and not isinstance(bound, int):
            raise Untranslatable(f"{keyword} {bound!r} for an integer")
        if not abs(bound) < _EXACT:  # also refuses NaN
            raise Untranslatable(f"{keyword} {bound!r} beyond exact float comparison")
        meta[name] = bound
    return meta
