"""Regenerate the reference part of docs/flows.md from the step and endpoint registries.

Everything after the ``BEGIN GENERATED`` marker is replaced by
``sampan.flows.docs.flow_docs()``; the hand-written guide above it is kept. ``--check``
exits 1 when the committed file is stale (a unit test does the same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from sampan.flows.docs import flow_docs

DOC_PATH: Final = Path(__file__).resolve().parent.parent / "docs" / "flows.md"
MARKER: Final = "<!-- BEGIN GENERATED: scripts/gen_flow_docs.py -->\n"


def render(current: str) -> str:
    intro = current.split(MARKER, 1)[0] if MARKER in current else current
    return intro + MARKER + flow_docs()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the doc is stale")
    args = parser.parse_args(argv)
    current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    text = render(current)
    if args.check:
        if MARKER not in current or current != text:
            print(f"{DOC_PATH} is stale: run python scripts/gen_flow_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
