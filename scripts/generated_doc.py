"""Shared by the doc generators: a hand-written part above a marker, a generated part below.

``--check`` exits 1 when the committed file is stale (unit tests do the same)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def render(current: str, marker: str, generate: Callable[[], str]) -> str:
    intro = current.split(marker, 1)[0] if marker in current else current
    return intro + marker + generate()


def main(
    doc_path: Path,
    script: str,
    generate: Callable[[], str],
    description: str | None,
    argv: list[str] | None = None,
) -> int:
    marker = f"<!-- BEGIN GENERATED: scripts/{script} -->\n"
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="fail if the doc is stale")
    args = parser.parse_args(argv)
    current = doc_path.read_text(encoding="utf-8") if doc_path.exists() else ""
    text = render(current, marker, generate)
    if args.check:
        if marker not in current or current != text:
            print(f"{doc_path} is stale: run python scripts/{script}", file=sys.stderr)
            return 1
        return 0
    doc_path.write_text(text, encoding="utf-8")
    print(f"wrote {doc_path}")
    return 0
