"""Which plugins exist, how an entry becomes a plugin, and how a route's chain is built.

Nothing here is module-level mutable state: ``plugin_types()`` builds its mapping on every
call (it is only called at config load time).
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sampan.gateway.config import PluginEntry
from sampan.gateway.plugins.acl import AclPlugin
from sampan.gateway.plugins.base import Plugin, PluginEnvironment
from sampan.gateway.plugins.cors import CorsPlugin
from sampan.gateway.plugins.errors import PluginConfigError, format_key_path
from sampan.gateway.plugins.ip_restriction import IpRestrictionPlugin
from sampan.gateway.plugins.jwt_auth import JwtPlugin
from sampan.gateway.plugins.key_auth import KeyAuthPlugin
from sampan.gateway.plugins.rate_limit import RateLimitPlugin
from sampan.gateway.plugins.request_id import RequestIdPlugin
from sampan.gateway.plugins.request_size_limit import RequestSizeLimitPlugin
from sampan.gateway.plugins.request_transformer import RequestTransformerPlugin
from sampan.gateway.plugins.response_transformer import ResponseTransformerPlugin
from sampan.gateway.plugins.webhook_signature import WebhookSignaturePlugin
from sampan.units import format_byte_size, format_duration

__all__ = ["PluginConfigError", "build_chain", "build_plugin", "plugin_docs", "plugin_types"]


def plugin_types() -> dict[str, type[Plugin]]:
    """Plugin name -> class, highest priority first (a new dict on every call)."""
    classes: list[type[Plugin]] = [
        RequestIdPlugin,
        CorsPlugin,
        IpRestrictionPlugin,
        RequestSizeLimitPlugin,
        WebhookSignaturePlugin,
        JwtPlugin,
        KeyAuthPlugin,
        AclPlugin,
        RateLimitPlugin,
        RequestTransformerPlugin,
        ResponseTransformerPlugin,
    ]
    classes.sort(key=lambda cls: -cls.priority)
    return {cls.name: cls for cls in classes}


def _validation_errors(exc: ValidationError) -> tuple[list[tuple[str, str]], list[Any]]:
    errors: list[tuple[str, str]] = []
    locs: list[Any] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        errors.append((format_key_path(loc), message))
        locs.append(loc)
    return errors, locs


def build_plugin(entry_name: str, raw_config: Mapping[str, Any], env: PluginEnvironment) -> Plugin:
    """Validate ``raw_config`` with the plugin's options model and construct the plugin.

    Raises ``PluginConfigError`` for an unknown name, invalid options (one error per bad
    key, located within the config) or a construction failure (e.g. two consumers sharing
    an API key). The plugin is not started."""
    types_ = plugin_types()
    cls = types_.get(entry_name)
    if cls is None:
        raise PluginConfigError(
            entry_name, [("", f"unknown plugin (expected one of: {', '.join(sorted(types_))})")]
        )
    try:
        options = cls.Options.model_validate(dict(raw_config))
    except ValidationError as exc:
        errors, locs = _validation_errors(exc)
        raise PluginConfigError(
            entry_name, errors, locs=locs, validation_error=exc, model=cls.Options
        ) from None
    try:
        return cls(options, env)
    except PluginConfigError:
        raise
    except ValueError as exc:
        raise PluginConfigError(entry_name, [("", str(exc))]) from exc


def build_chain(
    global_entries: Sequence[PluginEntry | Plugin],
    route_entries: Sequence[PluginEntry],
    env: PluginEnvironment,
) -> list[Plugin]:
    """The plugins a route runs, highest priority first.

    A route entry replaces the global entry of the same name (Kong's rule) — including a
    disabled one, which turns that global plugin off for the route. Disabled entries are
    skipped. Global entries may be given already built (``Plugin`` instances), to share one
    instance (and its state, e.g. local rate-limit buckets) between routes; entries are
    built with ``env``. A failing entry raises ``PluginConfigError`` with ``scope``
    (``"global"``/``"route"``) and ``index`` set.
    """
    chosen: dict[str, tuple[str, int, PluginEntry | Plugin]] = {}
    for index, item in enumerate(global_entries):
        chosen[item.name] = ("global", index, item)
    for index, entry in enumerate(route_entries):
        chosen[entry.name] = ("route", index, entry)
    chain: list[Plugin] = []
    for scope, index, item in chosen.values():
        if isinstance(item, Plugin):
            chain.append(item)
            continue
        if not item.enabled:
            continue
        try:
            chain.append(build_plugin(item.name, item.config, env))
        except PluginConfigError as exc:
            exc.scope = scope
            exc.index = index
            raise
    chain.sort(key=lambda plugin: -plugin.priority)
    return chain


# --------------------------------------------------------------------------- docs


_ANNOTATED_NAMES = {
    "_header_name": "header name",
    "_header_value": "header value",
    "_json_path": "dotted path",
    "_cidr": "IP or CIDR",
    "check_re2": "regex",
    "parse_duration": "duration",
    "parse_byte_size": "size",
}


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


def _table(model: type[BaseModel], prefix: str, out: list[str]) -> None:
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
        _table(sub, f"{key}.", out)


def plugin_docs() -> str:
    """The generated part of docs/plugins.md: one section per plugin, in run order."""
    out: list[str] = [
        "## Plugin reference\n\n",
        "| Plugin | Priority |\n|---|---|\n",
    ]
    types_ = plugin_types()
    out.extend(f"| [`{name}`](#{name}) | {cls.priority} |\n" for name, cls in types_.items())
    for name, cls in types_.items():
        module_doc = sys.modules[cls.__module__].__doc__ or ""
        first, _, more = module_doc.strip().partition("\n\n")
        out.append(f"\n### {name}\n\nPriority {cls.priority}. {_first_paragraph(first)}\n")
        rest = _clean(more + "\n\n" + (cls.__doc__ or ""))
        if rest:
            out.append(f"\n{rest}\n")
        out.append("\n")
        _table(cls.Options, "", out)
    return "".join(out)


def _first_paragraph(doc: str) -> str:
    first = doc.strip().split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in first.splitlines())
    head, _, tail = text.partition(": ")
    text = tail[:1].upper() + tail[1:] if tail and " " not in head else text
    return text.replace("``", "`")


def _clean(doc: str) -> str:
    paragraphs = [
        " ".join(line.strip() for line in p.splitlines()) for p in doc.strip().split("\n\n")
    ]
    return "\n\n".join(p.replace("``", "`") for p in paragraphs if p)
