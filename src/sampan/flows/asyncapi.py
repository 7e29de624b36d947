"""An AsyncAPI 3.0 document of a node's topics: who publishes to each, which flow consumes
it, and the payload schema its consumers validate against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sampan.config import SampanConfig
from sampan.flows.endpoints.topic import TopicSourceConfig
from sampan.flows.references import references
from sampan.flows.steps.validate import ValidateOptions, load_schema

_PROTOCOLS = {"nats": "nats", "redis": "redis", "rediss": "redis", "sqlite": "sqlite"}


def _channel_id(topic: str) -> str:
    return topic.replace("/", "_")


def asyncapi_document(config: SampanConfig, data_dir: Path) -> dict[str, Any]:
    url = config.bus.resolved_url(data_dir)
    scheme = url.split("://", 1)[0].lower()
    channels: dict[str, dict[str, Any]] = {}
    operations: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}

    def channel(topic: str, description: str = "") -> dict[str, str]:
        entry = channels.setdefault(
            _channel_id(topic),
            {"address": topic, "messages": {"message": {"payload": {"type": "object"}}}},
        )
        if description and "description" not in entry:
            entry["description"] = description
        return {"$ref": f"#/channels/{_channel_id(topic)}"}

    for topic in config.bus.topics:
        channel(topic.name)
    for route in config.routes:
        target = route.target.topic
        if target is not None:
            ref = channel(target.name, f"HTTP requests accepted by route {route.name}.")
            operations[f"route.{route.name}"] = {
                "action": "send",
                "channel": ref,
                "summary": f"The gateway publishes requests to {route.match.path} "
                f"({', '.join(route.match.methods) or 'any method'}) as CloudEvents.",
            }
    for sub in config.subscriptions:
        operations[f"subscription.{sub.topic}.{sub.group}"] = {
            "action": "receive",
            "channel": channel(sub.topic),
            "summary": f"Handler {sub.handler} (group {sub.group}).",
        }
    for index, flow in enumerate(config.flows):
        source = flow.source.options
        inbound = source.topic if isinstance(source, TopicSourceConfig) else flow.ingress_topic()
        receive: dict[str, Any] = {
            "action": "receive",
            "summary": f"Flow {flow.name}" + (f": {flow.description}" if flow.description else ""),
        }
        if inbound is not None:
            receive["channel"] = channel(inbound)
            first = flow.steps[0].options
            if isinstance(first, ValidateOptions):
                name = Path(first.schema_file).stem
                schemas[name] = load_schema(Path(first.schema_file))
                message = channels[_channel_id(inbound)]["messages"]["message"]
                message["payload"] = {"$ref": f"#/components/schemas/{name}"}
            channel(inbound + ".dlq", f"Dead letters of {inbound}.")
            operations[f"flow.{flow.name}.receive"] = receive
        sent = 0
        for found in references(flow, ("flows", index)):
            if found.kind == "topic" and found.loc[-1] == "topic" and "from" not in found.loc:
                operations[f"flow.{flow.name}.send.{sent}"] = {
                    "action": "send",
                    "channel": channel(found.name),
                    "summary": f"Flow {flow.name} publishes here.",
                }
                sent += 1
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{config.node.name} event bus",
            "version": "1.0.0",
            "description": "Topics, flows and payload schemas of a sampan node.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "bus": {
                "host": url.split("://", 1)[1] or "embedded",
                "protocol": _PROTOCOLS.get(scheme, scheme),
            }
        },
        "channels": dict(sorted(channels.items())),
        "operations": operations,
    }
    if schemas:
        document["components"] = {"schemas": schemas}
    return document
