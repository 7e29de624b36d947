"""Which plugins exist, how an entry becomes a plugin, and how a route's chain is built.

Nothing here is module-level mutable state: ``plugin_types()`` builds its mapping on every
call (it is only called at config load time).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

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
from sampan.options_docs import clean_doc, first_paragraph, options_table

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
        out.append(f"\n### {name}\n\nPriority {cls.priority}. {first_paragraph(first)}\n")
        rest = clean_doc(more + "\n\n" + (cls.__doc__ or ""))
        if rest:
            out.append(f"\n{rest}\n")
        out.append("\n")
        options_table(cls.Options, "", out)
    return "".join(out)
