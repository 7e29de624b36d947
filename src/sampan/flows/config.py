"""A flow in ``sampan.yaml``: ``from`` an endpoint, through steps."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sampan.bus.retry_config import RetryConfig
from sampan.config_types import Name
from sampan.flows.expressions import Expression
from sampan.flows.spec import SourceSpec, StepSpec


class FlowConfig(BaseModel):
    """A declarative integration pipeline (Enterprise Integration Patterns)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name = Field(description="Flow name (also its default consumer group).")
    description: str = Field("", description="What the flow is for (shown in docs/AsyncAPI).")
    source: SourceSpec = Field(
        alias="from",
        description="Where messages come from: `{topic: ..., group: ...}`, `{route: ...}`, "
        "`{timer: 5s}`, `{cron: ...}`, `{files: ...}`, `{mqtt: ...}`, `{outbox: ...}`.",
    )
    steps: list[StepSpec] = Field(min_length=1, description="The steps, in order.")
    concurrency: int = Field(
        16, ge=1, le=1024, description="Messages processed at once (always on different keys)."
    )
    retry: RetryConfig | None = Field(
        None, description="Retries before dead-lettering (default: `bus.retry`)."
    )
    key: Expression | None = Field(
        None,
        description="For sources other than topics: JMESPath giving the key of each message "
        "(messages with the same key are processed in order).",
    )

    def ingress_topic(self) -> str | None:
        """Where a non-topic source lands its messages; None for topic and route sources."""
        if self.source.kind in ("topic", "route"):
            return None
        return f"flows.{self.name}.in"
