"""JMESPath selections turned into the source of one Python function, once, when a flow is
built.

`sampan.flows.jmespath_compiler` makes one closure per AST node, so a transform such as
``{id: data.id, lines: data.items[*].{sku: sku, qty: qty}}`` costs a Python call per field
and per projected element: ~20 calls for an eight-field order, half of the step's time.
Here the shapes that transforms and routing predicates are made of — fields, paths,
multi-select hashes and lists, list projections, comparisons, ``&&``, ``||``, ``!``,
literals, ``@`` — become the statements of a single function; any other node (filters,
flattening, functions...) is called as its compiled closure. The generated code does what
the closures do, which follow jmespath's interpreter; the tests hold both to it.

Nothing from the expression is written into the source: field names, keys and literals
are passed in as bound constants (``_c0``, ``_c1``...), so the generated text only ever
holds names chosen here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sampan.flows.jmespath_compiler import (
    ORDERING,
    Compiled,
    Node,
    Root,
    compile_node,
    equals,
    is_false,
    negate,
    orderable,
)

_WORTH_GENERATING = frozenset(
    {
        "multi_select_dict",
        "multi_select_list",
        "projection",
        "comparator",
        "and_expression",
        "or_expression",
        "not_expression",
    }
)
"""Top nodes (alone or at the end of a path) whose subtrees are worth one function: the
rest (a path, a literal) is already one or two closures."""

_OPERATORS = {"lt": "<", "gt": ">", "lte": "<=", "gte": ">="}
assert _OPERATORS.keys() == ORDERING.keys()

_ORDERED_TYPES = frozenset({int, float, str})
"""What JSON decodes to and JMESPath orders, told by exact type (bool is not among them)."""


class _NotGenerated(Exception):
    """A node neither generated nor compiled: the caller keeps its other means."""


def generate(node: Node, root: Root | None = None) -> Compiled | None:
    """The expression as one generated function of the current value (of what ``root``
    reads, if given), or None where generating would not pay or is not possible."""
    if not _worth_it(node):
        return None
    writer = _Writer(root)
    try:
        result = writer.node(node, "value", root is not None, 1)
    except (_NotGenerated, RecursionError):
        return None
    source = "def generated(value):\n" + "".join(writer.lines) + f"    return {result}\n"
    namespace: dict[str, Any] = dict(writer.constants)
    try:
        exec(compile(source, "<jmespath>", "exec"), namespace)  # only names chosen here
    except (SyntaxError, RecursionError, MemoryError):  # e.g. too many nested blocks
        return None
    function: Compiled = namespace["generated"]
    return function


def _worth_it(node: Node) -> bool:
    kind = node["type"]
    if kind in _WORTH_GENERATING:
        return True
    if kind in ("subexpression", "pipe") and node["children"]:
        return _worth_it(node["children"][-1])
    return False


class _Writer:
    """Emits statements; each `node` call returns the name holding that node's value."""

    def __init__(self, root: Root | None) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._bound: dict[int, str] = {}
        self._root = root
        self._root_reads: dict[str, str] = {}
        self._count = 0

    def bind(self, value: Any) -> str:
        """A name for ``value`` in the function's globals; one per object (the helpers that
        every comparison or ``&&`` calls are bound once)."""
        name = self._bound.get(id(value))
        if name is None:
            name = self._bound[id(value)] = f"_c{len(self.constants)}"
            self.constants[name] = value  # keeps the object, so its id stays its own
        return name

    def temp(self) -> str:
        self._count += 1
        return f"_t{self._count}"

    def emit(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text + "\n")

    def node(self, node: Node, src: str, at_root: bool, indent: int) -> str:
        """Statements computing ``node`` of ``src`` at ``indent``; at_root: ``src`` is what
        the `Root` reads (the message), not a document."""
        kind = node["type"]
        if kind == "field":
            if at_root:
                return self._root_field(node["value"], src, indent)
            return self._fields(src, [node["value"]], indent)
        if kind in ("subexpression", "pipe", "index_expression"):
            return self._chain(node["children"], src, at_root, indent)
        if kind == "multi_select_dict":
            pairs = [(child["value"], child["children"][0]) for child in node["children"]]
            return self._select(pairs, src, at_root, indent, dict_keys=True)
        if kind == "multi_select_list":
            return self._select(
                [(None, child) for child in node["children"]], src, at_root, indent, False
            )
        if kind == "projection":
            return self._projection(node, src, at_root, indent)
        if kind == "comparator":
            return self._comparator(node, src, at_root, indent)
        if kind in ("and_expression", "or_expression"):
            return self._logical(node, src, at_root, indent)
        if kind == "not_expression":
            inner = self.node(node["children"][0], src, at_root, indent)
            out = self.temp()
            self.emit(indent, f"{out} = {self.bind(negate)}({inner})")
            return out
        if kind == "literal":
            return self.bind(node["value"])
        if kind in ("current", "identity"):
            if at_root:
                assert self._root is not None
                return self._call(self._root.whole, src, indent)
            return src
        compiled = compile_node(node, self._root if at_root else None)
        if compiled is None:
            raise _NotGenerated(kind)
        return self._call(compiled, src, indent)

    def _call(self, function: Compiled, src: str, indent: int) -> str:
        out = self.temp()
        self.emit(indent, f"{out} = {self.bind(function)}({src})")
        return out

    def _root_field(self, name: str, src: str, indent: int) -> str:
        """A top-level field read off the message once: a read at the function's first
        level always runs, so it serves every later one. A read inside a branch (the right
        side of ``||``) stays there: reading ``data`` decodes the payload."""
        known = self._root_reads.get(name)
        if known is not None:
            return known
        assert self._root is not None
        out = self._call(self._root.field(name), src, indent)
        if indent == 1:
            self._root_reads[name] = out
        return out

    def _fields(self, src: str, names: list[str], indent: int) -> str:
        """``a.b.c`` of a value: a field of anything but an object is null, which is what
        ``get`` failing on a non-dict (or on None) gives."""
        out = self.temp()
        gets = "".join(f".get({self.bind(name)})" for name in names)
        self.emit(indent, "try:")
        self.emit(indent + 1, f"{out} = {src}{gets}")
        self.emit(indent, "except AttributeError:")
        self.emit(indent + 1, f"{out} = None")
        return out

    def _chain(self, children: list[Node], src: str, at_root: bool, indent: int) -> str:
        """Each child of what the one before made; runs of plain fields as one ``get`` chain."""
        value, position = src, 0
        if at_root and children and children[0]["type"] == "field":
            value = self._root_field(children[0]["value"], src, indent)
            position, at_root = 1, False
        while position < len(children):
            child = children[position]
            if child["type"] == "field" and not at_root:
                names = []
                while position < len(children) and children[position]["type"] == "field":
                    names.append(children[position]["value"])
                    position += 1
                value = self._fields(value, names, indent)
                continue
            value = self.node(child, value, at_root, indent)
            at_root = False
            position += 1
        return value

    def _select(
        self,
        pairs: list[tuple[str | None, Node]],
        src: str,
        at_root: bool,
        indent: int,
        dict_keys: bool,
    ) -> str:
        out = self.temp()
        inner = indent
        if not at_root:  # the message is never None; a document may be
            self.emit(indent, f"if {src} is None:")
            self.emit(indent + 1, f"{out} = None")
            self.emit(indent, "else:")
            inner = indent + 1
        values = [(key, self.node(child, src, at_root, inner)) for key, child in pairs]
        if dict_keys:
            items = ", ".join(f"{self.bind(key)}: {value}" for key, value in values)
            self.emit(inner, f"{out} = {{{items}}}")
        else:
            self.emit(inner, f"{out} = [{', '.join(value for _, value in values)}]")
        return out

    def _comparator(self, node: Node, src: str, at_root: bool, indent: int) -> str:
        """Equality by `equals` (0 is not false); ordering only between two numbers or two
        strings, else null, as the closures do; a literal operand's type is known here."""
        left_node, right_node = node["children"]
        left = self.node(left_node, src, at_root, indent)
        right = self.node(right_node, src, at_root, indent)
        out, op = self.temp(), node["value"]
        if op in ("eq", "ne"):
            negation = "not " if op == "ne" else ""
            self.emit(indent, f"{out} = {negation}{self.bind(equals)}({left}, {right})")
            return out
        types, check = self.bind(_ORDERED_TYPES), self.bind(orderable)
        tests = [
            f"(type({value}) in {types} or {check}({value}))"
            for value, operand in ((left, left_node), (right, right_node))
            if not (operand["type"] == "literal" and type(operand["value"]) in _ORDERED_TYPES)
        ]
        if not tests:
            self.emit(indent, f"{out} = {left} {_OPERATORS[op]} {right}")
            return out
        self.emit(indent, f"if {' and '.join(tests)}:")
        self.emit(indent + 1, f"{out} = {left} {_OPERATORS[op]} {right}")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{out} = None")
        return out

    def _logical(self, node: Node, src: str, at_root: bool, indent: int) -> str:
        """``a || b`` is ``a`` unless it is false, ``a && b`` is ``a`` if it is false: the
        right side runs only when needed."""
        first = self.node(node["children"][0], src, at_root, indent)
        out = self.temp()
        negation = "" if node["type"] == "or_expression" else "not "
        self.emit(indent, f"if {negation}{self.bind(is_false)}({first}):")
        second = self.node(node["children"][1], src, at_root, indent + 1)
        self.emit(indent + 1, f"{out} = {second}")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{out} = {first}")
        return out

    def _projection(self, node: Node, src: str, at_root: bool, indent: int) -> str:
        """``base[*].rest``: ``rest`` of every element of a list, nulls dropped."""
        base, each = node["children"]
        items = self.node(base, src, at_root, indent)
        out, item = self.temp(), self.temp()
        self.emit(indent, f"if isinstance({items}, list):")
        self.emit(indent + 1, f"{out} = []")
        self.emit(indent + 1, f"for {item} in {items}:")
        result = self.node(each, item, False, indent + 2)
        self.emit(indent + 2, f"if {result} is not None:")
        self.emit(indent + 3, f"{out}.append({result})")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{out} = None")
        return out


def generated_or_compiled(node: Mapping[str, Any], root: Root | None = None) -> Compiled | None:
    """What flows evaluate an expression with: a generated function where one pays, else the
    closures, else None (the interpreter)."""
    return generate(node, root) or compile_node(node, root)
