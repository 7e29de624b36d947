"""``sampan services``: each service's endpoints as an operator reads them."""

from __future__ import annotations

from typing import Any


def _state(endpoint: dict[str, Any]) -> str:
    if endpoint.get("ejected_for"):
        return f"ejected {endpoint['ejected_for']:.0f}s"
    if endpoint.get("unhealthy_for"):
        return f"failing {endpoint['unhealthy_for']:.0f}s"
    if not endpoint.get("healthy", True):
        return "unhealthy"
    return "up" if endpoint.get("available", True) else "down"


def describe_services(data: dict[str, Any]) -> str:
    rows = [
        (
            "SERVICE",
            "ENDPOINT",
            "SOURCE",
            "W",
            "VER",
            "STATE",
            "BREAKER",
            "EWMA",
            "INFL",
            "REQS",
            "FAIL",
            "EJECT",
            "LAST ERROR",
        )
    ]
    for service in data.get("services", []):
        endpoints = service.get("endpoints", [])
        if not endpoints:
            rows.append((service["name"], "(no endpoints)", *("",) * 11))
        for endpoint in endpoints:
            rows.append(
                (
                    service["name"],
                    endpoint["url"],
                    endpoint.get("source", ""),
                    str(endpoint.get("weight", "")),
                    endpoint.get("version") or "-",
                    _state(endpoint),
                    endpoint.get("breaker") or "-",
                    f"{endpoint.get('ewma_ms', 0):.1f}ms",
                    str(endpoint.get("in_flight", 0)),
                    str(endpoint.get("requests", 0)),
                    str(endpoint.get("failures", 0)),
                    str(endpoint.get("ejections", 0)),
                    (endpoint.get("last_error") or "-")[:40],
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
