"""Every step and endpoint kind a flow can name, by the key that names it.

Built on each call (config load and docs only), so nothing here is mutable module state.
"""

from __future__ import annotations

from typing import Any

from sampan.flows.endpoint import EndpointKind, Sink, Source
from sampan.flows.step import StepKind


def step_kinds() -> dict[str, StepKind[Any]]:
    from sampan.flows.steps import (
        aggregate,
        choice,
        claim_check,
        dedupe,
        delay,
        enrich,
        filter,
        headers,
        log,
        multicast,
        python_step,
        recipient_list,
        resequence,
        scatter_gather,
        split,
        throttle,
        to,
        transform,
        validate,
        wire_tap,
    )

    kinds: list[StepKind[Any]] = [
        validate.KIND,
        filter.KIND,
        transform.KIND,
        headers.SET_KIND,
        headers.REMOVE_KIND,
        choice.KIND,
        recipient_list.KIND,
        split.KIND,
        aggregate.KIND,
        enrich.KIND,
        wire_tap.KIND,
        multicast.KIND,
        scatter_gather.KIND,
        dedupe.KIND,
        claim_check.KIND,
        throttle.KIND,
        delay.KIND,
        resequence.KIND,
        log.KIND,
        python_step.KIND,
        to.KIND,
    ]
    return {kind.key: kind for kind in kinds}


def source_kinds() -> dict[str, EndpointKind[Any, Source]]:
    from sampan.flows.connectors import SOURCE_KINDS
    from sampan.flows.endpoints import route, topic

    kinds: list[EndpointKind[Any, Source]] = [topic.SOURCE, route.SOURCE, *SOURCE_KINDS]
    return {kind.key: kind for kind in kinds}


def sink_kinds() -> dict[str, EndpointKind[Any, Sink]]:
    from sampan.flows.connectors import SINK_KINDS
    from sampan.flows.endpoints import service, topic

    kinds: list[EndpointKind[Any, Sink]] = [topic.SINK, service.SINK, *SINK_KINDS]
    return {kind.key: kind for kind in kinds}
