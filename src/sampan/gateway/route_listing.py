"""``sampan routes``: the effective route table as an operator reads it."""

from __future__ import annotations

from sampan.config import SampanConfig
from sampan.gateway.config import MatchConfig, RouteConfig
from sampan.gateway.effective_plugins import effective_entries


def describe_match(match: MatchConfig) -> str:
    if match.path is not None:
        return match.path
    if match.path_prefix is not None:
        return match.path_prefix + "*"
    if match.path_regex is not None:
        return "~" + match.path_regex
    return "*"


def describe_target(route: RouteConfig) -> str:
    target = route.target
    if target.service is not None:
        where = target.service.service or ",".join(target.service.endpoints)
        extra = " (strip prefix)" if route.strip_prefix else ""
        extra += f" (rewrite {route.rewrite})" if route.rewrite else ""
        return f"service {where}{extra}"
    if target.topic is not None:
        return f"topic {target.topic.name}"
    assert target.respond is not None
    return f"respond {target.respond.status}"


def describe_routes(config: SampanConfig) -> str:
    rows = [("ROUTE", "HOSTS", "METHODS", "PATH", "CONDITIONS", "TARGET", "PLUGINS")]
    for route in config.routes:
        match = route.match
        conditions = [f"{k}: {v}" for k, v in match.headers.items()]
        conditions += [f"?{k}={v}" for k, v in match.query.items()]
        plugins = effective_entries(config.gateway.plugins, route.plugins)
        rows.append(
            (
                route.name,
                ",".join(match.hosts) or "*",
                ",".join(match.methods) or "*",
                describe_match(match),
                "; ".join(conditions) or "-",
                describe_target(route),
                " > ".join(entry.name for entry in plugins) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    listen = config.gateway.listen
    lines.append(f"{len(config.routes)} route(s) on http://{listen.host}:{listen.port}")
    return "\n".join(lines)
