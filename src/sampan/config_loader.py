"""YAML → plain data with a source map, so validation errors can name file:line:col.

pydantic only sees plain Python data and reports errors by key path; this module keeps,
for every key path, where its value (and key) was written — including values that came
from an ``!include``d file — and turns pydantic's errors back into located, short
messages. It also does ``${VAR}`` interpolation, which has to happen on the YAML scalar
(before pydantic) so ``port: ${PORT:-9090}`` is an int like a literal ``9090`` would be.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sampan.units import describe_value

__all__ = [
    "INCLUDE_TAG",
    "ConfigError",
    "ConfigIssue",
    "InterpolationError",
    "KeyPath",
    "LoadedDocument",
    "Location",
    "escape_interpolation",
    "format_key_path",
    "interpolate",
    "load_document",
    "read_config_file",
    "validate_document",
]

INCLUDE_TAG: Final = "!include"
_STR_TAG: Final = "tag:yaml.org,2002:str"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_VAR_REF: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_SIMPLE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

KeyPath = tuple[Hashable, ...]
"""Keys and list indices from the document root, as in pydantic's error ``loc``."""

ModelT = TypeVar("ModelT", bound=BaseModel)


# --------------------------------------------------------------------------- issues


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config, located so an editor can jump to it."""

    file: str
    line: int
    """1-based; 0 when the problem is the file as a whole (e.g. it cannot be read)."""
    column: int
    path: str
    """Dotted key path such as ``bus.topics[2].name``; empty for file-level problems."""
    message: str

    def format(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in a config: users fix them all in one pass, not one per run."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(issue.format() for issue in self.issues))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ConfigIssue]]]:
        return (type(self), (self.issues,))  # survives pickling to worker processes


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int
    column: int


def format_key_path(path: KeyPath) -> str:
    """``("bus", "topics", 2, "name")`` → ``bus.topics[2].name``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _SIMPLE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


# -------------------------------------------------------------------- interpolation


class InterpolationError(ValueError):
    """A ``${...}`` reference that cannot be expanded; lists every problem in the string."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def _expand(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand references; problems are returned, not raised, so all of them get reported."""
    out: list[str] = []
    problems: list[str] = []
    i = 0
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        if text.startswith("$${", j):
            out.append("${")
            i = j + 3
        elif text.startswith("${", j):
            end = text.find("}", j + 2)
            if end < 0:
                problems.append(f"unterminated '${{' at offset {j} (expected '}}')")
                out.append(text[j:])
                break
            ref = text[j + 2 : end]
            match = _VAR_REF.fullmatch(ref)
            if match is None:
                problems.append(
                    f"invalid reference '${{{ref}}}' (expected ${{NAME}} or ${{NAME:-default}};"
                    " write $${ for a literal ${)"
                )
                out.append(text[j : end + 1])
            else:
                name, default = match.group(1), match.group(2)
                value = env.get(name)
                if default is not None and not value:
                    out.append(default)
                elif value is None:
                    problems.append(
                        f"environment variable {name} is not set"
                        f" (set it, or give a default: ${{{name}:-default}})"
                    )
                    out.append(text[j : end + 1])
                else:
                    out.append(value)
            i = end + 1
        else:
            out.append("$")
            i = j + 1
    return "".join(out), problems


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$${`` is a literal ``${``.

    Like a shell (and docker compose), the default is used when the variable is unset
    *or empty*. Defaults are literal text and cannot contain ``}``.
    """
    result, problems = _expand(text, env)
    if problems:
        raise InterpolationError(problems)
    return result


def escape_interpolation(text: str) -> str:
    """The inverse of `interpolate` for literal text: ``interpolate(escape(s), env) == s``."""
    return text.replace("${", "$${")


# ---------------------------------------------------------------------------- YAML


@dataclass(slots=True)
class LoadedDocument:
    """Plain data ready for pydantic, plus what is needed to locate its errors."""

    root_file: str
    data: Any
    values: dict[KeyPath, Location] = field(default_factory=dict)
    """Where each value starts (for a mapping or list: its first entry)."""
    keys: dict[KeyPath, Location] = field(default_factory=dict)
    """Where each mapping key was written."""
    issues: list[ConfigIssue] = field(default_factory=list)
    """YAML, interpolation and include problems found while loading."""
    failed: set[KeyPath] = field(default_factory=set)
    """Paths whose value is unusable; validation errors beneath them are noise."""
    files: list[str] = field(default_factory=list)
    """Files in the order they were read, to sort issues the way the config reads."""


@dataclass(frozen=True, slots=True)
class _Source:
    """The file a node came from: where its includes resolve and how it was reached."""

    display: str
    directory: Path
    chain: tuple[tuple[Path, str], ...]


def read_config_file(path: Path, display: str) -> tuple[str | None, ConfigIssue | None]:
    """Text of a config file, or the issue that explains why it cannot be read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, ConfigIssue(display, 0, 0, "", "file not found")
    except IsADirectoryError:
        return None, ConfigIssue(display, 0, 0, "", "is a directory, not a file")
    except OSError as exc:
        return None, ConfigIssue(display, 0, 0, "", f"cannot read file: {exc.strerror or exc}")
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, ConfigIssue(display, line, column, "", "not valid UTF-8 text")


class _DocumentBuilder:
    """One load: composes files, expands includes and variables, records locations."""

    def __init__(self, env: Mapping[str, str], doc: LoadedDocument) -> None:
        self._env = env
        self._doc = doc
        self._constructor = yaml.constructor.SafeConstructor()
        self._resolver = yaml.resolver.Resolver()
        # Keyed by the node itself, not id(node): the key keeps the node alive, so the id of a
        # freed node from an earlier included file can never alias a new one.
        self._entries: dict[Node, list[tuple[Hashable, Node, Node]]] = {}

    # -- reporting

    def issue(self, loc: Location, path: KeyPath, message: str) -> None:
        self._doc.issues.append(
            ConfigIssue(loc.file, loc.line, loc.column, format_key_path(path), message)
        )

    def fail(self, node: Node, path: KeyPath, message: str) -> None:
        self.issue(_loc(node), path, message)
        self._doc.failed.add(path)

    # -- files

    def compose(self, text: str, display: str) -> tuple[bool, Node | None]:
        """(ok, root node); a YAML error is recorded and gives ok=False."""
        if display not in self._doc.files:
            self._doc.files.append(display)
        loader: yaml.SafeLoader | None = None
        try:
            loader = yaml.SafeLoader(text)  # checks for unprintable characters up front
            loader.name = display  # marks carry the file name: included nodes locate themselves
            return True, loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = f"invalid YAML: {exc.problem or exc.context}"
            if exc.context and exc.problem and exc.context_mark is not None:
                ctx = exc.context_mark
                message += f" ({exc.context} at line {ctx.line + 1}, column {ctx.column + 1})"
            line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            self._doc.issues.append(ConfigIssue(display, line, column, "", message))
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
            self._doc.issues.append(
                ConfigIssue(
                    display,
                    line,
                    column,
                    "",
                    f"invalid YAML: character #x{exc.character:04x} is not allowed ({exc.reason})",
                )
            )
        except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error has a mark
            self._doc.issues.append(ConfigIssue(display, 1, 1, "", f"invalid YAML: {exc}"))
        finally:
            if loader is not None:
                loader.dispose()
        return False, None

    def _include(self, node: Node, path: KeyPath, src: _Source) -> Any:
        self._doc.values[path] = _loc(node)  # until the included root replaces it
        if not isinstance(node, ScalarNode) or not node.value:
            self.fail(node, path, "!include takes a file path, e.g. `!include topics.yaml`")
            return None
        target, problems = _expand(node.value, self._env)
        for text in problems:
            self.issue(_loc(node), path, text)
        if problems:
            self._doc.failed.add(path)
            return None
        real = (src.directory / target).resolve()
        display = os.path.normpath(os.path.join(os.path.dirname(src.display), target))
        if any(real == seen for seen, _ in src.chain):
            cycle = " -> ".join([*(name for _, name in src.chain), display])
            self.fail(node, path, f"include cycle: {cycle}")
            return None
        content, unreadable = read_config_file(real, display)
        if unreadable is not None and unreadable.line > 0:  # located inside the included file
            self._doc.issues.append(unreadable)
            self._doc.failed.add(path)
            return None
        if unreadable is not None or content is None:
            reason = unreadable.message if unreadable is not None else "unreadable"
            self.fail(node, path, f"cannot include {display}: {reason}")
            return None
        ok, root = self.compose(content, display)
        if not ok:
            self._doc.failed.add(path)
            return None
        if root is None:  # an empty file is null, like an empty document
            self._doc.values[path] = Location(display, 1, 1)
            return None
        inner = _Source(display, real.parent, (*src.chain, (real, display)))
        return self.build(root, path, inner, frozenset())

    # -- nodes

    def build(self, node: Node, path: KeyPath, src: _Source, active: frozenset[int]) -> Any:
        if node.tag == INCLUDE_TAG:
            return self._include(node, path, src)
        self._doc.values[path] = _loc(node)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in active:
            self.fail(node, path, "recursive alias (an anchor used inside itself)")
            return None
        active = active | {id(node)}
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), src, active) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            result: dict[Hashable, Any] = {}
            for key, key_node, value_node in self._mapping_entries(node, path):
                key_path = (*path, key)
                self._doc.keys[key_path] = _loc(key_node)
                result[key] = self.build(value_node, key_path, src, active)
            return result
        raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def _scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        if node.tag == _STR_TAG and "$" in node.value:
            text, problems = _expand(node.value, self._env)
            for problem in problems:
                self.issue(_loc(node), path, problem)
            if problems:
                self._doc.failed.add(path)
                return node.value
            # An unquoted value is typed after expansion, as if the user had typed it.
            tag: str = _STR_TAG
            if node.style is None:
                tag = self._resolver.resolve(ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
            node = ScalarNode(tag, text, node.start_mark, node.end_mark, node.style)
        try:
            return self._constructor.construct_object(node)
        except ConstructorError as exc:
            self.fail(node, path, _constructor_message(exc))
            return None

    def _mapping_entries(
        self, node: MappingNode, path: KeyPath
    ) -> list[tuple[Hashable, Node, Node]]:
        """Entries after ``<<`` merges; explicit keys override merged ones, as YAML says."""
        cached = self._entries.get(node)
        if cached is not None:  # an aliased mapping: flatten_mapping already rewrote it
            return cached
        explicit = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
        try:
            self._constructor.flatten_mapping(node)
        except ConstructorError as exc:
            self.fail(node, path, _constructor_message(exc))
            self._entries[node] = []
            return []
        winners: dict[Hashable, tuple[Node, Node]] = {}
        first_seen: dict[Hashable, Node] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is _NO_KEY:
                continue
            if id(key_node) in explicit:
                if key in first_seen:
                    first = first_seen[key].start_mark.line + 1
                    self.issue(
                        _loc(key_node),
                        (*path, key),
                        f"duplicate key (first defined at line {first}; the later one is ignored)",
                    )
                    continue
                first_seen[key] = key_node
            winners[key] = (key_node, value_node)
        entries = [(key, k, v) for key, (k, v) in winners.items()]
        self._entries[node] = entries
        return entries

    def _key(self, node: Node, path: KeyPath) -> Hashable:
        if not isinstance(node, ScalarNode) or node.tag == INCLUDE_TAG:
            self.issue(_loc(node), path, "mapping keys must be plain scalars")
            return _NO_KEY
        try:
            key = self._constructor.construct_object(node)
        except ConstructorError as exc:
            self.issue(_loc(node), path, _constructor_message(exc))
            return _NO_KEY
        if not isinstance(key, Hashable):  # pragma: no cover - scalars are hashable
            self.issue(_loc(node), path, "mapping keys must be plain scalars")
            return _NO_KEY
        return key


_NO_KEY: Final = object()


def _loc(node: Node) -> Location:
    mark = node.start_mark
    return Location(str(mark.name), mark.line + 1, mark.column + 1)


def _constructor_message(exc: ConstructorError) -> str:
    problem = str(exc.problem or exc)
    if "could not determine a constructor for the tag" in problem:
        return problem.replace("could not determine a constructor for the tag", "unknown tag") + (
            f" (the only custom tag is {INCLUDE_TAG})"
        )
    return problem


def load_document(
    text: str,
    *,
    filename: str,
    base_dir: Path | None,
    env: Mapping[str, str],
) -> LoadedDocument:
    """Parse ``text`` (as the file ``filename``) into data plus a source map; never raises."""
    doc = LoadedDocument(root_file=filename, data={})
    doc.values[()] = Location(filename, 1, 1)
    builder = _DocumentBuilder(env, doc)
    ok, root = builder.compose(text, filename)
    if not ok or root is None:
        return doc
    directory = base_dir if base_dir is not None else Path.cwd()
    real = (directory / os.path.basename(filename)).resolve()
    src = _Source(filename, directory, ((real, filename),))
    data = builder.build(root, (), src, frozenset())
    doc.data = {} if data is None else data
    return doc


# ---------------------------------------------------------------------- validation


def validate_document(
    model: type[ModelT], doc: LoadedDocument, *, context: Mapping[str, Any] | None = None
) -> ModelT:
    """Validate loaded data; raise one ConfigError with every load and validation issue."""
    issues = list(doc.issues)
    result: ModelT | None = None
    try:
        result = model.model_validate(doc.data, context=dict(context or {}))
    except ValidationError as exc:
        for error in exc.errors():
            issue = _issue_from_error(model, doc, error)
            if issue is not None and issue not in issues:
                issues.append(issue)
    if issues or result is None:
        raise ConfigError(_sorted(issues, doc))
    return result


def _sorted(issues: list[ConfigIssue], doc: LoadedDocument) -> list[ConfigIssue]:
    order = {name: i for i, name in enumerate(doc.files)}
    return sorted(issues, key=lambda i: (order.get(i.file, len(order)), i.line, i.column))


def _issue_from_error(
    model: type[BaseModel], doc: LoadedDocument, error: Mapping[str, Any]
) -> ConfigIssue | None:
    loc: KeyPath = tuple(error["loc"])
    on_key = bool(loc) and loc[-1] == "[key]"
    path = loc[:-1] if on_key else loc
    if any(path[: len(bad)] == bad for bad in doc.failed):
        return None  # already reported while loading (e.g. a missing variable)
    kind = error["type"]
    if kind == "missing":
        where = _nearest(doc.values, path[:-1], doc.root_file)
    elif kind == "extra_forbidden" or on_key:
        where = doc.keys.get(path) or _nearest(doc.values, path, doc.root_file)
    else:
        where = _nearest(doc.values, path, doc.root_file)
    message = _message(model, doc, path, error)
    return ConfigIssue(where.file, where.line, where.column, format_key_path(path), message)


def _nearest(values: Mapping[KeyPath, Location], path: KeyPath, root_file: str) -> Location:
    for cut in range(len(path), -1, -1):
        found = values.get(path[:cut])
        if found is not None:
            return found
    return Location(root_file, 1, 1)  # pragma: no cover - the root is always recorded


_MISSING: Final = object()


def _raw_value(data: Any, path: KeyPath) -> Any:
    """What the user wrote at ``path`` (pydantic's input may already be converted)."""
    for part in path:
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_list or (isinstance(data, dict) and part in data)):
            return _MISSING
        data = data[part]
    return data


_TYPE_WORDS: Final = types.MappingProxyType(
    {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "finite_number": "a finite number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
    }
)
_BOUNDS: Final = types.MappingProxyType(
    {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
)


def _message(
    model: type[BaseModel], doc: LoadedDocument, path: KeyPath, error: Mapping[str, Any]
) -> str:
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    raw = _raw_value(doc.data, path)
    got = describe_value(error.get("input") if raw is _MISSING else raw)
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parent = _annotation_at(model, path[:-1])
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            return f"unknown key (expected one of: {', '.join(parent.model_fields)})"
        return "unknown key"
    if kind in _BOUNDS:
        op, name = _BOUNDS[kind]
        return f"must be {op} {describe_value(ctx.get(name))}, got {got}"
    if kind == "literal_error":
        choices = _literal_choices(_annotation_at(model, path))
        expected = ", ".join(repr(c) for c in choices) if choices else ctx.get("expected", "")
        return f"must be one of {expected}, got {got}"
    if kind in _TYPE_WORDS:
        if path != tuple(error["loc"]):  # the mapping key itself is wrong, not its value
            return f"key must be {_TYPE_WORDS[kind]}, got {describe_value(error.get('input'))}"
        return f"must be {_TYPE_WORDS[kind]}, got {got}"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional so only the interesting type is left."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _annotation_at(model: type[BaseModel], path: KeyPath) -> Any:
    current: Any = model
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field_info = current.model_fields.get(str(part))
            if field_info is None:
                return None
            current = field_info.annotation
        elif typing.get_origin(current) in (list, tuple, set, frozenset):
            current = typing.get_args(current)[0] if typing.get_args(current) else Any
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1] if typing.get_args(current) else Any
        else:
            return None
    return _unwrap(current)


def _literal_choices(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return ()


# Pydantic's own error kinds can be re-raised by name; custom ones (durations, sizes) and
# value errors are re-raised with their message.
_BUILTIN_ERROR_TYPES: Final = frozenset(get_args(ErrorType))


def relocated(
    title: str,
    exc: ValidationError,
    prefix: tuple[str | int, ...],
    *,
    unwrap: str | None = None,
) -> ValidationError:
    """``exc``'s errors moved under ``prefix``: a model validated inside another model's
    validator (a plugin's options, a flow step's options) still reports the full key path.
    ``unwrap`` drops that leading key: the value was written in short form without it."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=error["type"]
                if error["type"] in _BUILTIN_ERROR_TYPES
                and not error["type"].startswith("value_error")
                else PydanticCustomError(error["type"], error["msg"]),
                loc=(*prefix, *_unwrapped(error["loc"], unwrap)),
                input=error["input"],
                ctx=error.get("ctx", {}),
            )
            for error in exc.errors()
        ],
    )


def _unwrapped(loc: tuple[str | int, ...], key: str | None) -> tuple[str | int, ...]:
    return loc[1:] if key is not None and loc[:1] == (key,) else loc
