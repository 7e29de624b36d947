"""The ``sampan.yaml`` schema and its loader.

The pydantic models are the single source of truth: they validate the file, provide
every default, and generate both the JSON Schema (for editors) and
``docs/configuration.md``. Loading mechanics (YAML, ``!include``, ``${VAR}``, located
errors) live in `sampan.config_loader`; this module only adds the sampan-specific parts.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sampan.bus.retry_config import RetryConfig
from sampan.config_loader import (
    ConfigError,
    ConfigIssue,
    load_document,
    read_config_file,
    validate_document,
)
from sampan.config_types import ImportPath, Name
from sampan.flows.config import FlowConfig
from sampan.flows.references import references
from sampan.gateway.config import ConsumerConfig, GatewayConfig, RouteConfig
from sampan.mesh.config import MeshConfig, ServiceConfig
from sampan.store.config import StoreConfig
from sampan.switch_interval import DEFAULT_SWITCH_INTERVAL
from sampan.units import ByteSize, Duration, describe_value

__all__ = [
    "BUS_SCHEMES",
    "SCHEMA_ID",
    "AdminConfig",
    "BusConfig",
    "ByteSize",
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "ImportPath",
    "Name",
    "NodeConfig",
    "RetentionConfig",
    "RetryConfig",
    "SampanConfig",
    "SubscriptionConfig",
    "TaskConfig",
    "TopicConfig",
    "config_json_schema",
    "load_config",
    "parse_config_text",
]

SCHEMA_ID: Final = "urn:sampan:config"
BUS_SCHEMES: Final = ("sqlite", "nats", "redis", "rediss", "memory")
_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


T = TypeVar("T")


def require_unique(
    model: str, field: str, what: str, items: list[T], key: Callable[[T], str]
) -> list[T]:
    """One located error per repeated name (at ``field[i].name``), pointing at the first."""
    first: dict[str, int] = {}
    errors: list[InitErrorDetails] = []
    for index, item in enumerate(items):
        name = key(item)
        if name in first:
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError(
                        "duplicate_name",
                        "duplicate {what} (already declared at {field}[{first}])",
                        {"what": what, "field": field, "first": first[name]},
                    ),
                    loc=(index, "name" if field != "consumers" else "username"),
                    input=name,
                )
            )
        else:
            first[name] = index
    if errors:
        raise ValidationError.from_exception_data(model, errors)
    return items


class _Section(BaseModel):
    """Base of every config model: unknown keys are errors, since typos must not pass."""

    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- node


class AdminConfig(_Section):
    """The admin API and dashboard of this node."""

    enabled: bool = Field(True, description="Serve the admin API and dashboard.")
    host: str = Field(
        "127.0.0.1",
        description="Interface the admin API listens on; keep it on loopback unless a proxy"
        " in front of it authenticates users.",
    )
    port: int = Field(9090, ge=0, le=65535, description="Admin API port (0 = pick a free one).")


class NodeConfig(_Section):
    """This process: identity, local state and lifecycle."""

    name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Name of this node in metrics, traces and the admin API."
        " Defaults to the machine's host name.",
    )
    data_dir: Path = Field(
        Path("data"),
        description="Directory for local state (the embedded bus, jobs, audit log)."
        " A relative path is relative to the config file's directory.",
    )
    admin: AdminConfig = Field(default_factory=AdminConfig, description="Admin API settings.")
    shutdown_grace: Duration = Field(
        10.0,
        description="How long a stopping node waits for in-flight work before cancelling it.",
    )
    python_path: list[Path] = Field(
        default_factory=list,
        description="Extra directories to import user handlers and tasks from."
        " Relative paths are relative to the config file's directory.",
    )
    gil_switch_interval: Duration | None = Field(
        DEFAULT_SWITCH_INTERVAL,
        description="How long the event loop may keep Python's GIL from a thread waiting for"
        " it (the embedded bus's database thread), set for the node's process while it runs."
        " Python's 5ms default made every SQLite call of that thread wait behind a busy loop;"
        " 0.1ms gave +35 % bus and +15 % flow throughput. null leaves Python's setting alone.",
    )

    gc_young_threshold: int | None = Field(
        None,
        ge=100,
        le=10_000_000,
        description="Allocations between two collections of the garbage collector's youngest"
        " generation, set for the node's process while it runs (older generations keep"
        " theirs); null keeps Python's 700. Higher trades pauses for throughput: 5000 gave"
        " a flow ~10 % more messages a second but young collections of up to ~9 ms (middle"
        " ones ~17 ms) under a 10,000 msg/s bus load, against ~2 and ~4 ms at 700.",
    )

    @field_validator("gil_switch_interval")
    @classmethod
    def _switch_interval_in_range(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1.0:
            raise PydanticCustomError(
                "switch_interval",
                "must be more than 0 and at most 1s (0.1ms is the default), got {value}",
                {"value": describe_value(value)},
            )
        return value

    def resolve_paths(self, base_dir: Path) -> None:
        """Anchor relative paths at the config file, not at wherever the node was started."""
        self.data_dir = _absolute(base_dir, self.data_dir)
        self.python_path = [_absolute(base_dir, p) for p in self.python_path]


def _absolute(base_dir: Path, path: Path) -> Path:
    return Path(os.path.normpath(base_dir / path.expanduser())).absolute()


# ------------------------------------------------------------------------------ bus


class RetentionConfig(_Section):
    """How long messages are kept after they are published; whichever limit hits first."""

    max_age: Duration | None = Field(
        604800.0, description="Delete messages older than this (null = keep regardless of age)."
    )
    max_bytes: ByteSize | None = Field(
        None,
        description="Delete the oldest messages once a topic is larger than this"
        " (null = no size limit).",
    )


class TopicConfig(_Section):
    """A topic declared up front, optionally with its own retention."""

    name: Name = Field(description="Topic name.")
    retention: RetentionConfig | None = Field(
        None, description="Retention of this topic (null = the bus-wide `bus.retention`)."
    )


class BusConfig(_Section):
    """The event bus: durable topics with consumer groups."""

    url: str | None = Field(
        None,
        description="Where the bus lives: `sqlite:///relative/bus.db`, `sqlite:////absolute/bus.db`,"
        " `nats://host:4222`, `redis://host:6379/0`, `rediss://...` or `memory://`."
        " null = an SQLite file `bus.db` in `node.data_dir`.",
    )
    durability: Literal["full", "normal"] = Field(
        "full",
        description="SQLite `synchronous` mode: `full` survives power loss, `normal` only"
        " process crashes (faster).",
    )
    auto_create_topics: bool = Field(
        True, description="Create a topic on first publish or subscribe instead of failing."
    )
    lease: Duration = Field(
        30.0,
        gt=0,
        description="How long a delivered message stays invisible to the group; if it is not"
        " acknowledged in time it is redelivered.",
    )
    poll_interval: Duration = Field(
        0.05,
        gt=0,
        description="How often consumers poll when they cannot be woken in-process"
        " (e.g. messages published by another process).",
    )
    fetch_batch: int = Field(
        256, ge=1, le=10000, description="Most messages fetched from storage in one read."
    )
    max_in_flight_per_group: int = Field(
        10000,
        ge=1,
        description="Most unacknowledged messages per consumer group; bounds memory and"
        " redelivery storms.",
    )
    maintenance_interval: Duration = Field(
        5.0, gt=0, description="Period of retention enforcement and consumer-lag refresh."
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Default retry policy of subscriptions (each can override it).",
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,
        description="Default retention of topics (each can override it).",
    )
    topics: list[TopicConfig] = Field(
        default_factory=list, description="Topics declared up front, with their settings."
    )

    @field_validator("url")
    @classmethod
    def _check_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        allowed = ", ".join(BUS_SCHEMES)
        match = _SCHEME_RE.match(value)
        if match is None:
            raise PydanticCustomError(
                "bus_url",
                "must be a URL like 'nats://localhost:4222' (scheme one of: {allowed}),"
                " got {value}",
                {"allowed": allowed, "value": describe_value(value)},
            )
        if match.group(1).lower() not in BUS_SCHEMES:
            raise PydanticCustomError(
                "bus_url_scheme",
                "unsupported scheme '{scheme}' (expected one of: {allowed})",
                {"scheme": match.group(1), "allowed": allowed},
            )
        return value

    @field_validator("topics")
    @classmethod
    def _unique_topics(cls, topics: list[TopicConfig]) -> list[TopicConfig]:
        return require_unique(cls.__name__, "topics", "topic name", topics, lambda t: t.name)

    def resolved_url(self, data_dir: Path) -> str:
        """The bus URL, defaulting to SQLite in the data directory.

        SQLite URLs follow SQLAlchemy: ``sqlite:///relative/path`` and
        ``sqlite:////absolute/path`` (three slashes, then the path).
        """
        if self.url is not None:
            return self.url
        return "sqlite:///" + (data_dir / "bus.db").as_posix()


# ------------------------------------------------------------------- subscriptions


class SubscriptionConfig(_Section):
    """A consumer group running a handler for every message of a topic."""

    topic: Name = Field(description="Topic to consume.")
    group: Name = Field(
        description="Consumer group; nodes running the same group share the messages."
    )
    handler: ImportPath = Field(
        description="Function called with each message, as `package.module:function`."
    )
    concurrency: int = Field(
        16, ge=1, le=10000, description="Messages handled at the same time by this node."
    )
    start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a new group starts: `earliest` retained message or only"
        " messages published from now on (`latest`).",
    )
    retry: RetryConfig | None = Field(
        None, description="Retry policy of this subscription (null = `bus.retry`)."
    )


class TaskConfig(_Section):
    """A long-running user coroutine started with the node (pollers, schedulers, ...)."""

    run: ImportPath = Field(description="Coroutine function to run, as `package.module:function`.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the function."
    )


# ----------------------------------------------------------------------------- root


class SampanConfig(_Section):
    """A sampan node's configuration (`sampan.yaml`)."""

    node: NodeConfig = Field(default_factory=NodeConfig, description="This node.")
    bus: BusConfig = Field(default_factory=BusConfig, description="The event bus.")
    subscriptions: list[SubscriptionConfig] = Field(
        default_factory=list, description="Handlers consuming topics."
    )
    tasks: list[TaskConfig] = Field(
        default_factory=list, description="Long-running user coroutines started with the node."
    )
    gateway: GatewayConfig = Field(
        default_factory=GatewayConfig, description="The HTTP data plane (listener, limits)."
    )
    consumers: list[ConsumerConfig] = Field(
        default_factory=list, description="API consumers and their credentials."
    )
    routes: list[RouteConfig] = Field(
        default_factory=list, description="Gateway routes, each to a service, topic or response."
    )
    services: list[ServiceConfig] = Field(
        default_factory=list,
        description="Named upstream services with discovery, balancing and resilience (mesh).",
    )
    mesh: MeshConfig = Field(
        default_factory=MeshConfig, description="Identity (mTLS), authorisation, deadlines."
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig,
        description="Where stateful flow steps keep their state (SQLite, Redis, PostgreSQL).",
    )
    flows: list[FlowConfig] = Field(
        default_factory=list, description="Integration flows (Enterprise Integration Patterns)."
    )

    @field_validator("flows")
    @classmethod
    def _unique_flows(cls, items: list[FlowConfig]) -> list[FlowConfig]:
        return require_unique(cls.__name__, "flows", "flow name", items, lambda item: item.name)

    @model_validator(mode="after")
    def _flows_refer_to_what_exists(self) -> Self:
        services = {service.name for service in self.services}
        routes = {route.name: route for route in self.routes}
        declared_topics = {topic.name for topic in self.bus.topics}
        problems = []
        for index, flow in enumerate(self.flows):
            for ref in references(flow, ("flows", index)):
                message = None
                if ref.kind == "service" and ref.name not in services:
                    message = "no service named '{name}' in `services:` (known: {known})"
                    known = services
                elif ref.kind == "route":
                    route = routes.get(ref.name)
                    known = {name for name, r in routes.items() if r.target.topic is not None}
                    if route is None or route.target.topic is None:
                        message = "no route named '{name}' with a topic target (known: {known})"
                elif (
                    ref.kind == "topic"
                    and not self.bus.auto_create_topics
                    and ref.name not in declared_topics
                ):
                    message = (
                        "topic '{name}' is not declared in `bus.topics` and"
                        " `bus.auto_create_topics` is off (declared: {known})"
                    )
                    known = declared_topics
                if message is not None:
                    problems.append(
                        InitErrorDetails(
                            type=PydanticCustomError(
                                f"unknown_{ref.kind}",
                                message,
                                {"name": ref.name, "known": ", ".join(sorted(known)) or "none"},
                            ),
                            loc=ref.loc,
                            input=ref.name,
                        )
                    )
        if problems:
            raise ValidationError.from_exception_data("SampanConfig", problems)
        return self

    @field_validator("services")
    @classmethod
    def _unique_services(cls, items: list[ServiceConfig]) -> list[ServiceConfig]:
        return require_unique(
            cls.__name__, "services", "service name", items, lambda item: item.name
        )

    @model_validator(mode="after")
    def _routes_name_known_services(self) -> Self:
        known = {service.name for service in self.services}
        problems = []
        for index, route in enumerate(self.routes):
            target = route.target.service
            if target is not None and target.service is not None and target.service not in known:
                problems.append(
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "unknown_service",
                            "no service named '{name}' in `services:` (known: {known})",
                            {"name": target.service, "known": ", ".join(sorted(known)) or "none"},
                        ),
                        loc=("routes", index, "target", "service", "service"),
                        input=target.service,
                    )
                )
        if problems:
            raise ValidationError.from_exception_data("SampanConfig", problems)
        return self

    @field_validator("routes")
    @classmethod
    def _unique_route_names(cls, items: list[RouteConfig]) -> list[RouteConfig]:
        return require_unique(cls.__name__, "routes", "route name", items, lambda item: item.name)

    @field_validator("consumers")
    @classmethod
    def _unique_consumers(cls, items: list[ConsumerConfig]) -> list[ConsumerConfig]:
        return require_unique(
            cls.__name__, "consumers", "username", items, lambda item: item.username
        )

    @model_validator(mode="after")
    def _resolve_paths(self, info: ValidationInfo) -> Self:
        base_dir = (info.context or {}).get("base_dir")
        if isinstance(base_dir, Path):
            self.node.resolve_paths(base_dir)
        return self


# -------------------------------------------------------------------------- loading


def parse_config_text(
    text: str,
    *,
    filename: str = "sampan.yaml",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> SampanConfig:
    """Validate config text; issues name ``filename``.

    ``base_dir`` anchors ``!include`` and relative paths in the config (``node.data_dir``,
    ``node.python_path``); without it includes are relative to the working directory and
    paths are left as written. Raises `ConfigError` listing every problem.
    """
    doc = load_document(
        text,
        filename=filename,
        base_dir=base_dir,
        env=os.environ if env is None else env,
    )
    return validate_document(SampanConfig, doc, context={"base_dir": base_dir})


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> SampanConfig:
    """Load a config file; issues name it as given (relative stays relative)."""
    display = os.fspath(path)
    file = Path(path)
    text, problem = read_config_file(file, display)
    if problem is not None:
        raise ConfigError([problem])
    assert text is not None
    return parse_config_text(text, filename=display, base_dir=file.parent, env=env)


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of ``sampan.yaml``, for editor completion and validation."""
    schema = SampanConfig.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "sampan configuration",
    }
