"""Runs one flow test case against config text: the steps' tests read like the flow tests
users write (inputs, fixture answers, expected outputs), on the same runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sampan.config import parse_config_text
from sampan.flows.testing import CaseResult, FlowTestCase, run_case


async def run_flow_case(tmp_path: Path, config_text: str, case: dict[str, Any]) -> CaseResult:
    config = parse_config_text(config_text, base_dir=tmp_path)
    return await run_case(config, tmp_path / "sampan.yaml", FlowTestCase.model_validate(case))


def flows_config(steps: str, *, source: str = "{topic: in, group: g}", extra: str = "") -> str:
    """A config with one flow named `f` whose steps are the given YAML (indented 6)."""
    return (
        "bus: {retry: {max_attempts: 2}}\n"
        + extra
        + f"flows:\n  - name: f\n    from: {source}\n    steps:\n{steps}"
    )
