"""docs/flows.md's reference is generated from the step and endpoint registries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sampan.flows.docs import flow_docs
from sampan.flows.kinds import sink_kinds, source_kinds, step_kinds

ROOT = Path(__file__).resolve().parents[3]
MARKER = "<!-- BEGIN GENERATED: scripts/gen_flow_docs.py -->\n"


def test_committed_doc_is_current() -> None:
    committed = (ROOT / "docs" / "flows.md").read_text(encoding="utf-8")
    assert MARKER in committed
    assert committed.split(MARKER, 1)[1] == flow_docs(), (
        "docs/flows.md is stale: run python scripts/gen_flow_docs.py"
    )
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_flow_docs.py"), "--check"],
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_every_kind_is_documented_with_a_summary() -> None:
    docs = flow_docs()
    for key, step in step_kinds().items():
        assert f"\n### {key}\n" in docs and step.summary
    for key in source_kinds():
        assert f"### sources: {key}\n" in docs
    for key in sink_kinds():
        assert f"### destinations: {key}\n" in docs
    assert len(step_kinds()) >= 20
