"""Turns validated step and endpoint specs into running objects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from sampan.flows.endpoint import EndpointContext, Sink
from sampan.flows.kinds import sink_kinds, step_kinds
from sampan.flows.pipeline import GuardedStep, Pipeline
from sampan.flows.service_caller import ServiceCaller
from sampan.flows.spec import SinkSpec, StepSpec
from sampan.flows.step import BuildContext, Resume

BUS_AND_MESH_SINKS: Final = ("topic", "service")
"""Sinks a flow test runs for real (on its in-memory bus, against fixture services); the
other sinks (webhooks, MQTT, tables, files) are recorded instead."""


class FlowBuilder:
    def __init__(
        self,
        endpoint: EndpointContext,
        services: ServiceCaller,
        replace_sink: Callable[[str], Sink] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._replace_sink = replace_sink
        self.services = services
        self._steps = step_kinds()
        self._sinks = sink_kinds()
        self.step_errors = endpoint.metrics.counter(
            "sampan_flow_step_errors", "Step failures (before retries).", flow=endpoint.flow
        )
        """Also counted by the flow for a ``to`` whose output its batch's outbox could not
        publish (see `Flow.handle_batch`)."""

    def build_steps(self, specs: Sequence[StepSpec], prefix: str, tail: Resume) -> Pipeline:
        """``prefix`` locates the list (``""`` for the flow's own steps); ``tail`` runs after
        its last step when a stateful step resumes the flow from the middle."""
        pipeline = Pipeline(tail)
        for index, spec in enumerate(specs):
            label = f"{prefix}{'.' if prefix else ''}steps[{index}].{spec.kind}"
            ctx = BuildContext(
                endpoint=self.endpoint,
                label=label,
                resume=pipeline.resume_after(index),
                build_sink=self.build_sink,
                build_steps=self.build_steps,
                services=self.services,
            )
            step = self._steps[spec.kind].build(spec.options, ctx)
            step.label = label
            on_error = spec.on_error
            sink = (
                self.build_sink(on_error.to, f"{label}.on_error")
                if on_error is not None and on_error.to is not None
                else None
            )
            pipeline.add(GuardedStep(step, on_error, sink, self.step_errors), sink)
        return pipeline

    def build_sink(self, spec: SinkSpec, label: str) -> Sink:
        if self._replace_sink is not None and spec.kind not in BUS_AND_MESH_SINKS:
            return self._replace_sink(spec.kind)
        build = self._sinks[spec.kind].build
        assert build is not None, f"{label}: sink kind {spec.kind!r} has no builder"
        return build(spec.options, self.endpoint)
