"""JMESPath expressions turned into nested Python closures, once, when a flow is built.

The jmespath library evaluates by walking its AST with a visitor on every call: a dispatch
through ``getattr`` per node, which made a 10-field projection cost more than every other
step of a flow together. Closures built from the same AST do the same work without the
walk. Semantics follow jmespath's ``TreeInterpreter`` node for node (fields of non-objects
are null, projections drop nulls, ordering comparisons only between numbers or strings,
``0`` is not ``false``); a node kind not handled here (functions, slices, expression
references) returns None from `compile_node`, and the caller keeps the interpreter for
that expression. ``tests/unit/flows/test_jmespath_compiler.py`` checks the two agree.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Number
from typing import Any

Compiled = Callable[[Any], Any]
Node = Mapping[str, Any]


def is_false(value: Any) -> bool:
    """JMESPath falsiness: null, false, and empty string, list or object (0 is true)."""
    return value is None or value is False or value in ("", [], {})


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is float:  # what JSON decodes to: no ABC check (~0.3 µs)
        return True
    if kind is str or kind is bool or value is None:
        return False
    return isinstance(value, Number) and not isinstance(value, bool)


def orderable(value: Any) -> bool:
    return _is_number(value) or isinstance(value, str)


def equals(left: Any, right: Any) -> bool:
    # 0/1 never equal false/true in JMESPath, although they do in Python.
    if _is_number(left) and left in (0, 1) and isinstance(right, bool):
        return False
    if _is_number(right) and right in (0, 1) and isinstance(left, bool):
        return False
    return bool(left == right)


ORDERING: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt,
    "gt": operator.gt,
    "lte": operator.le,
    "gte": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Root:
    """How the outermost value is read when it is not itself a document.

    A flow evaluates against ``{data, headers, key}``; building that dict (and decoding the
    payload for it) on every evaluation is wasted when ``data.x`` can read the message's
    ``data`` directly. Nodes that see the outermost value get a `Root`: a top-level field
    becomes ``field(name)``, a top-level ``@`` becomes ``whole``."""

    field: Callable[[str], Compiled]
    whole: Compiled


def compile_node(node: Node, root: Root | None = None) -> Compiled | None:
    """A function of the current value (of what `Root` reads, if given), or None if the
    expression uses something not compiled here (the caller then keeps the interpreter)."""
    kind = node["type"]
    builder = _BUILDERS.get(kind)
    if builder is None:
        return None
    if kind == "subexpression" and all(c["type"] == "field" for c in node["children"]):
        return _field_path(node, root)
    if kind == "multi_select_dict":
        special = _select_fields(node) if root is None else _select_dict_on_root_field(node, root)
        if special is not None:
            return special
    if kind in _LEAVES:
        if root is None or kind == "literal":
            return builder(node, [])
        if kind == "field":
            return root.field(node["value"])
        if kind in ("current", "identity"):
            return root.whole
        on_value, whole = builder(node, []), root.whole
        return lambda value: on_value(whole(value))
    parts: list[Compiled] = []
    for position, child in enumerate(node.get("children", [])):
        # Only these children see the node's own input; the rest see what the first made.
        sees_input = position == 0 or kind not in _FIRST_CHILD_ONLY
        compiled = compile_node(child, root if sees_input else None)
        if compiled is None:
            return None
        parts.append(compiled)
    return builder(node, parts)


def _field(node: Node, _parts: list[Compiled]) -> Compiled:
    name = node["value"]

    def field(value: Any) -> Any:
        try:
            return value.get(name)
        except AttributeError:
            return None

    return field


def _field_path(node: Node, root: Root | None) -> Compiled:
    """``a.b.c``: one closure instead of a chain of one per field. A field of anything but
    an object is null, which is what ``get`` failing on a non-dict (or on None) gives."""
    names = tuple(child["value"] for child in node["children"])
    if root is not None:
        first = root.field(names[0])
        names = names[1:]
    else:
        first = identity
    if len(names) == 1:
        (name,) = names

        def path1(value: Any) -> Any:
            found = first(value)
            try:
                return found.get(name)
            except AttributeError:
                return None

        return path1
    if len(names) == 2:
        outer, inner = names

        def path2(value: Any) -> Any:
            found = first(value)
            try:
                return found.get(outer).get(inner)
            except AttributeError:
                return None

        return path2

    def path(value: Any) -> Any:
        found = first(value)
        try:
            for name in names:
                found = found.get(name)
        except AttributeError:
            return None
        return found

    return path


def identity(value: Any) -> Any:
    """The value as it is (``@``, a path with nothing left to read, text needing no escape)."""
    return value


def _select_fields(node: Node) -> Compiled | None:
    """``{sku: sku, qty: qty}``: every value a plain field, read with one bound ``get``."""
    fields: list[tuple[str, str]] = []
    for pair in node["children"]:
        value = pair["children"][0]
        if value["type"] != "field":
            return None
        fields.append((pair["value"], value["value"]))

    def select_fields(value: Any) -> Any:
        if value is None:
            return None
        try:
            get = value.get
        except AttributeError:  # fields of a non-object are null
            return {name: None for name, _ in fields}
        return {name: get(field) for name, field in fields}

    return select_fields


def _select_dict_on_root_field(node: Node, root: Root) -> Compiled | None:
    """``{a: data.x, b: data.y.z, c: data.items[*].sku}`` at the top: ``data`` is read off
    the message once, not once per key; the rest of each value is compiled against it.
    None when the values do not all start with the same top-level field."""
    first_field: str | None = None
    rests: list[tuple[str, Node | None]] = []
    for pair in node["children"]:
        value = pair["children"][0]
        if value["type"] == "field":
            name, rest = value["value"], None
        elif value["type"] == "subexpression" and value["children"][0]["type"] == "field":
            name = value["children"][0]["value"]
            tail = value["children"][1:]
            rest = tail[0] if len(tail) == 1 else {"type": "subexpression", "children": tail}
        else:
            return None
        if first_field is None:
            first_field = name
        elif name != first_field:
            return None
        rests.append((pair["value"], rest))
    if first_field is None:
        return None
    pairs: list[tuple[str, Compiled]] = []
    for key, rest in rests:
        compiled = identity if rest is None else compile_node(rest)
        if compiled is None:
            return None
        pairs.append((key, compiled))
    base = root.field(first_field)

    def select(value: Any) -> Any:
        found = base(value)
        return {name: part(found) for name, part in pairs}

    return select


def _chain(_node: Node, parts: list[Compiled]) -> Compiled:
    if len(parts) == 2:
        first, second = parts

        def chain2(value: Any) -> Any:
            return second(first(value))

        return chain2

    def chain(value: Any) -> Any:
        for part in parts:
            value = part(value)
        return value

    return chain


def _literal(node: Node, _parts: list[Compiled]) -> Compiled:
    constant = node["value"]
    return lambda _value: constant


def _current(_node: Node, _parts: list[Compiled]) -> Compiled:
    return identity


def _index(node: Node, _parts: list[Compiled]) -> Compiled:
    position = node["value"]

    def index(value: Any) -> Any:
        if not isinstance(value, list):
            return None
        try:
            return value[position]
        except IndexError:
            return None

    return index


def _key_value(_node: Node, parts: list[Compiled]) -> Compiled:
    return parts[0]


def _select_dict(node: Node, parts: list[Compiled]) -> Compiled:
    pairs = [(child["value"], part) for child, part in zip(node["children"], parts, strict=True)]

    def select(value: Any) -> Any:
        if value is None:
            return None
        return {name: part(value) for name, part in pairs}

    return select


def _select_list(_node: Node, parts: list[Compiled]) -> Compiled:
    def select(value: Any) -> Any:
        if value is None:
            return None
        return [part(value) for part in parts]

    return select


def _projection(_node: Node, parts: list[Compiled]) -> Compiled:
    base, each = parts

    def project(value: Any) -> Any:
        items = base(value)
        if not isinstance(items, list):
            return None
        out = []
        for item in items:
            result = each(item)
            if result is not None:
                out.append(result)
        return out

    return project


def _value_projection(_node: Node, parts: list[Compiled]) -> Compiled:
    base, each = parts

    def project(value: Any) -> Any:
        found = base(value)
        try:
            items = found.values()
        except AttributeError:
            return None
        out = []
        for item in items:
            result = each(item)
            if result is not None:
                out.append(result)
        return out

    return project


def _filter_projection(_node: Node, parts: list[Compiled]) -> Compiled:
    base, each, condition = parts

    def project(value: Any) -> Any:
        items = base(value)
        if not isinstance(items, list):
            return None
        out = []
        for item in items:
            if not is_false(condition(item)):
                result = each(item)
                if result is not None:
                    out.append(result)
        return out

    return project


def _flatten(_node: Node, parts: list[Compiled]) -> Compiled:
    (base,) = parts

    def flatten(value: Any) -> Any:
        items = base(value)
        if not isinstance(items, list):
            return None
        out: list[Any] = []
        for item in items:
            if isinstance(item, list):
                out.extend(item)
            else:
                out.append(item)
        return out

    return flatten


def _comparator(node: Node, parts: list[Compiled]) -> Compiled:
    left, right = parts
    op = node["value"]
    if op == "eq":
        return lambda value: equals(left(value), right(value))
    if op == "ne":
        return lambda value: not equals(left(value), right(value))
    compare = ORDERING[op]

    def ordered(value: Any) -> Any:
        a = left(value)
        b = right(value)
        if not (orderable(a) and orderable(b)):
            return None
        return compare(a, b)

    return ordered


def _or(_node: Node, parts: list[Compiled]) -> Compiled:
    first, second = parts

    def either(value: Any) -> Any:
        matched = first(value)
        return second(value) if is_false(matched) else matched

    return either


def _and(_node: Node, parts: list[Compiled]) -> Compiled:
    first, second = parts

    def both(value: Any) -> Any:
        matched = first(value)
        return matched if is_false(matched) else second(value)

    return both


def negate(result: Any) -> bool:
    """JMESPath's ``!``: ``!0`` is false, as 0 is an ordinary (true) number."""
    if _is_number(result) and result == 0:
        return False
    return not result


def _not(_node: Node, parts: list[Compiled]) -> Compiled:
    (inner,) = parts
    return lambda value: negate(inner(value))


_LEAVES = frozenset({"field", "literal", "current", "identity", "index"})
_FIRST_CHILD_ONLY = frozenset(
    {
        "subexpression",
        "index_expression",
        "pipe",
        "projection",
        "value_projection",
        "filter_projection",
        "flatten",
    }
)

_BUILDERS: dict[str, Callable[[Node, list[Compiled]], Compiled]] = {
    "field": _field,
    "subexpression": _chain,
    "index_expression": _chain,
    "pipe": _chain,
    "literal": _literal,
    "current": _current,
    "identity": _current,
    "index": _index,
    "key_val_pair": _key_value,
    "multi_select_dict": _select_dict,
    "multi_select_list": _select_list,
    "projection": _projection,
    "value_projection": _value_projection,
    "filter_projection": _filter_projection,
    "flatten": _flatten,
    "comparator": _comparator,
    "or_expression": _or,
    "and_expression": _and,
    "not_expression": _not,
}
