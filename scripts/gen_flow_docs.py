"""Regenerate the reference part of docs/flows.md from the step and endpoint registries.

Everything after the ``BEGIN GENERATED`` marker is replaced by
``sampan.flows.docs.flow_docs()``; the hand-written guide above it is kept.
``--check`` exits 1 when the committed file is stale (a unit test does the same).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

from generated_doc import main

from sampan.flows.docs import flow_docs

DOC_PATH: Final = Path(__file__).resolve().parent.parent / "docs" / "flows.md"

if __name__ == "__main__":
    sys.exit(main(DOC_PATH, "gen_flow_docs.py", flow_docs, __doc__.splitlines()[0]))
