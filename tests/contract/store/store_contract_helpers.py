"""Shared pieces of the StateStore contract suite: the backends under test.

Adding a backend is one line in ``BACKENDS``; the fixtures in ``conftest.py`` do the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from sampan.store.base import StateStore

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

OpenStore = Callable[[], Awaitable[StateStore]]
"""The ``open_started`` fixture: opens and starts another store on the URL under test."""


@dataclass(frozen=True)
class StoreBackend:
    """One backend under test. ``url`` may contain ``{tmp}`` (the test's private directory)."""

    name: str
    url: str
    shared: bool
    """Two instances opened on the same URL share their state (false for ``memory://``)."""
    exact_purge: bool
    """``purge_expired`` deletes and counts exactly the expired keys of this test (false on
    shared servers, where other runs' keys expire too, and for Redis, which expires keys by
    itself and reports 0)."""


BACKENDS = [
    StoreBackend("sqlite", "sqlite:///{tmp}/state.db", shared=True, exact_purge=True),
    StoreBackend("memory", "memory://", shared=False, exact_purge=True),
    StoreBackend("redis", REDIS_URL, shared=True, exact_purge=False),
    StoreBackend("postgres", POSTGRES_URL, shared=True, exact_purge=False),
]
# `postgres` is not registered in pyproject.toml, so conftest.py adds that mark to the
# collected items (after registering it) instead of naming it here at import time.
_MARKS: dict[str, tuple[Any, ...]] = {"redis": (pytest.mark.redis,)}
BACKEND_PARAMS = [pytest.param(b, id=b.name, marks=_MARKS.get(b.name, ())) for b in BACKENDS]
