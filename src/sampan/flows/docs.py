"""The reference part of docs/flows.md, generated from the step and endpoint registries."""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel, RootModel

from sampan.flows.endpoint import EndpointKind
from sampan.flows.kinds import sink_kinds, source_kinds, step_kinds
from sampan.options_docs import clean_doc, options_table


def flow_docs() -> str:
    out: list[str] = ["## Step reference\n\n", "| Step | What it does |\n|---|---|\n"]
    steps = step_kinds()
    out.extend(
        f"| [`{key}`](#{key.replace('_', '-')}) | {kind.summary} |\n"
        for key, kind in sorted(steps.items())
    )
    for key, kind in sorted(steps.items()):
        out.append(f"\n### {key}\n\n{kind.summary}\n")
        _module_doc(kind.options, out)
        _options(kind.options, out, getattr(kind.options, "shorthand", None))
        if kind.example is not None:
            out.append(
                "\n```yaml\n"
                + yaml.safe_dump([{key: kind.example}], sort_keys=False, allow_unicode=True)
                + "```\n"
            )
    sources: dict[str, EndpointKind[Any, Any]] = dict(source_kinds())
    sinks: dict[str, EndpointKind[Any, Any]] = dict(sink_kinds())
    for title, kinds in (("Sources (`from`)", sources), ("Destinations (`to`)", sinks)):
        out.append(f"\n## {title}\n\n")
        for key, endpoint in sorted(kinds.items()):
            out.append(f"### {title.split()[0].lower()}: {key}\n\n{endpoint.summary}\n\n")
            options_table(endpoint.config, "", out)
            out.append("\n")
    return "".join(out)


def _module_doc(model: type[BaseModel], out: list[str]) -> None:
    doc = sys.modules[model.__module__].__doc__ or ""
    parts = doc.strip().split("\n\n", 1)
    if len(parts) > 1:
        out.append("\n" + clean_doc(parts[1]) + "\n")


def _options(model: type[BaseModel], out: list[str], shorthand: Any) -> None:
    out.append("\n")
    if issubclass(model, RootModel):
        out.append(clean_doc(model.__doc__ or "") + "\n")
        return
    if shorthand:
        out.append(f"Short form: the value alone stands for `{shorthand}`.\n\n")
    options_table(model, "", out)
