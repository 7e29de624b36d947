"""Markdown tables of options models: the docs of plugins, flow steps and connectors are
generated from the same models that validate them (one source of truth)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sampan.units import format_byte_size, format_duration

_ANNOTATED_NAMES: typing.Final = types.MappingProxyType(
    {
        "_header_name": "header name",
        "_header_value": "header value",
        "_json_path": "dotted path",
        "_cidr": "IP or CIDR",
        "check_re2": "regex",
        "parse_duration": "duration",
        "parse_byte_size": "size",
        "_check_jmespath": "JMESPath",
        "_check_template": "Jinja2 template",
        "_check_brace_template": "{JMESPath} template",
        "check_name": "name",
        "_check_import_path": "import path",
    }
)


def _annotated_name(hint: Any) -> str | None:
    text = repr(hint)
    for marker, name in _ANNOTATED_NAMES.items():
        if marker in text:
            return name
    return None


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _annotated_name(hint) or _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        named = " or ".join(_type_name(a) for a in members)
        return f"{named} or null" if len(members) < len(args) else named
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if hint is Any:
        return "any JSON"
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return "mapping"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _default(info: FieldInfo, hint: Any) -> str:
    if info.default_factory is not None:
        factory: Any = info.default_factory
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return "see below"
        value = factory()
    elif info.default is PydanticUndefined:
        return "**required**"
    else:
        value = info.default
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, dict) and not value:
        return "`{}`"
    kind = _type_name(hint)
    if kind.startswith("duration"):
        return "`0s`" if value == 0 else f"`{format_duration(value)}`"
    if kind.startswith("size"):
        return f"`{format_byte_size(value)}`"
    return f"`{value}`"


def options_table(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    hints = typing.get_type_hints(model, include_extras=True)
    nested: list[tuple[str, type[BaseModel]]] = []
    out.append("| Key | Type | Default | Description |\n|---|---|---|---|\n")
    for name, info in model.model_fields.items():
        hint = hints[name]
        key = f"{prefix}{name}"
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{key}` | {_type_name(hint)} | {_default(info, hint)} | {description} |\n")
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            nested.append((key, hint))
    for key, sub in nested:
        out.append(f"\n`{key}`:\n\n")
        options_table(sub, f"{key}.", out)


def first_paragraph(doc: str) -> str:
    first = doc.strip().split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in first.splitlines())
    head, _, tail = text.partition(": ")
    text = tail[:1].upper() + tail[1:] if tail and " " not in head else text
    return text.replace("``", "`")


def clean_doc(doc: str) -> str:
    paragraphs = [
        " ".join(line.strip() for line in p.splitlines()) for p in doc.strip().split("\n\n")
    ]
    return "\n\n".join(p.replace("``", "`") for p in paragraphs if p)
