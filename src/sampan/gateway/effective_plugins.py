"""Which plugins a route really runs: global entries merged with its own, in run order."""

from __future__ import annotations

from sampan.gateway.config import PluginEntry


def effective_entries(
    global_entries: list[PluginEntry], route_entries: list[PluginEntry]
) -> list[PluginEntry]:
    """A route's entry replaces the global entry of the same name (Kong's rule); disabled
    entries drop out; the rest run by plugin priority, highest first."""
    from sampan.gateway.plugins.registry import plugin_types

    merged: dict[str, PluginEntry] = {entry.name: entry for entry in global_entries}
    for entry in route_entries:
        merged[entry.name] = entry
    types = plugin_types()
    active = [entry for entry in merged.values() if entry.enabled]
    return sorted(active, key=lambda entry: -types[entry.name].priority)
