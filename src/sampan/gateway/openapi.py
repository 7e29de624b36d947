"""An OpenAPI 3.1 document of the gateway's routes (``sampan docs openapi``).

Exact and template paths map to OpenAPI paths; prefix and regex routes have no OpenAPI form,
so they appear under ``x-sampan-unlisted-routes``, not silently dropped.
"""

from __future__ import annotations

import re
from typing import Any

from sampan import __version__
from sampan.config import SampanConfig
from sampan.gateway.config import RouteConfig
from sampan.gateway.effective_plugins import effective_entries

ANY_METHODS = ("get", "post", "put", "patch", "delete")
TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}")
PROBLEM = {"$ref": "#/components/responses/Problem"}


def _operation(route: RouteConfig, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    path = route.match.path or ""
    responses: dict[str, Any] = {"4XX": PROBLEM, "5XX": PROBLEM}
    target = route.target
    if target.topic is not None:
        responses["202"] = {
            "description": f"Published to topic {target.topic.name} (durable).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        }
    elif target.respond is not None:
        responses[str(target.respond.status)] = {"description": "Fixed response."}
    else:
        responses["default"] = {"description": "The upstream service's response."}
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.description or route.name,
        "responses": responses,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in TEMPLATE_PARAM.findall(path)
        ]
        + [
            {"name": name, "in": "header", "required": True, "schema": {"const": value}}
            for name, value in route.match.headers.items()
        ]
        + [
            {"name": name, "in": "query", "required": True, "schema": {"const": value}}
            for name, value in route.match.query.items()
        ],
    }
    if target.topic is not None or route.match.methods != ["GET"]:
        operation["requestBody"] = {"required": False, "content": {"*/*": {}}}
    if security:
        operation["security"] = security
    return operation


def _security(config: SampanConfig, route: RouteConfig) -> list[dict[str, list[str]]]:
    names = {entry.name for entry in effective_entries(config.gateway.plugins, route.plugins)}
    result: list[dict[str, list[str]]] = []
    if "key-auth" in names:
        result.append({"apiKey": []})
    if "jwt" in names:
        result.append({"bearerJwt": []})
    return result


def openapi_document(config: SampanConfig) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    unlisted: list[dict[str, str]] = []
    for route in config.routes:
        match = route.match
        if match.path is None:
            unlisted.append(
                {
                    "route": route.name,
                    "match": (
                        f"prefix {match.path_prefix}"
                        if match.path_prefix is not None
                        else f"regex {match.path_regex}"
                        if match.path_regex is not None
                        else "any path"
                    ),
                }
            )
            continue
        path = TEMPLATE_PARAM.sub(lambda m: "{" + m.group(1) + "}", match.path)
        item = paths.setdefault(path, {})
        methods = [m.lower() for m in match.methods] or list(ANY_METHODS)
        for method in methods:
            item[method] = _operation(route, _security(config, route))
    listen = config.gateway.listen
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"{config.node.name} gateway", "version": __version__},
        "servers": [{"url": f"http://{listen.host}:{listen.port}"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "apikey"},
                "bearerJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
            "schemas": {
                "Accepted": {
                    "type": "object",
                    "required": ["id", "topic", "offset"],
                    "properties": {
                        "id": {"type": "string", "description": "CloudEvent id."},
                        "topic": {"type": "string"},
                        "offset": {"type": "integer"},
                    },
                },
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details.",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                    },
                },
            },
            "responses": {
                "Problem": {
                    "description": "An error, as RFC 9457 problem+json.",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
        },
    }
    if unlisted:
        document["x-sampan-unlisted-routes"] = unlisted
    return document
