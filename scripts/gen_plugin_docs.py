"""Regenerate the reference part of docs/plugins.md from the plugins' options models.

Everything after the ``BEGIN GENERATED`` marker is replaced by
``sampan.gateway.plugins.registry.plugin_docs()``; the hand-written introduction above it is kept.
``--check`` exits 1 when the committed file is stale (a unit test does the same).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

from generated_doc import main

from sampan.gateway.plugins.registry import plugin_docs

DOC_PATH: Final = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"

if __name__ == "__main__":
    sys.exit(main(DOC_PATH, "gen_plugin_docs.py", plugin_docs, __doc__.splitlines()[0]))
