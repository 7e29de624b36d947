"""The live endpoints of one service, merged from its discovery sources.

Each source (``static``, ``dns``, ``registered``) hands over its whole current list with
``replace(source, specs)``. The set keeps the ``EndpointState`` object of every URL that
stays — with its counters, latency estimate, breaker and health verdicts — creates states
for new URLs and drops the states of URLs no source lists any more. Readers (balancers,
health checks, the admin API) call ``all()``, which returns a tuple cached until the next
change, so reading it per request costs nothing.

URLs are compared in canonical form (lowercase scheme and host, default port omitted, no
trailing ``/``), so ``http://A:80/`` and ``http://a`` are one endpoint. When two sources list
the same URL there is still one state; its weight, version and source come from the source
that ranks first in ``SOURCE_PRECEDENCE`` (operator-written ``static`` entries beat
``dns``, which beats ``registered``; other sources follow in name order).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sampan.http.client import split_base_url
from sampan.mesh.endpoint import EndpointState

__all__ = [
    "SOURCE_PRECEDENCE",
    "EndpointChange",
    "EndpointSet",
    "EndpointSpec",
    "canonical_url",
    "make_state",
]

log = logging.getLogger(__name__)

SOURCE_PRECEDENCE: Final = ("static", "dns", "registered")


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What a discovery source says about one endpoint."""

    url: str
    weight: int = 1
    version: str | None = None
    source: str = "static"
    expires_at: float | None = None
    """Registered endpoints: when the missing heartbeat removes it (monotonic seconds)."""


@dataclass(frozen=True, slots=True)
class EndpointChange:
    """What the last ``replace`` changed (``EndpointSet.last_change``)."""

    added: tuple[EndpointState, ...] = ()
    removed: tuple[EndpointState, ...] = ()
    updated: tuple[EndpointState, ...] = ()
    """States kept whose weight, version or source changed."""


ChangeCallback = Callable[[], None]
"""Called with no arguments after a change; ``EndpointSet.last_change`` says what changed."""


def canonical_url(url: str) -> str:
    """``scheme://host[:port][/base]`` in one spelling; raises ValueError for a bad URL."""
    endpoint, base_path = split_base_url(url)
    scheme = "https" if endpoint.tls else "http"
    return f"{scheme}://{endpoint.authority}{base_path}"


def make_state(spec: EndpointSpec) -> EndpointState:
    """A fresh ``EndpointState`` for ``spec`` (its URL canonicalised)."""
    endpoint, base_path = split_base_url(spec.url)
    scheme = "https" if endpoint.tls else "http"
    return EndpointState(
        url=f"{scheme}://{endpoint.authority}{base_path}",
        endpoint=endpoint,
        base_path=base_path,
        weight=spec.weight,
        version=spec.version,
        source=spec.source,
        expires_at=spec.expires_at,
    )


def _rank(source: str) -> tuple[int, str]:
    try:
        return (SOURCE_PRECEDENCE.index(source), "")
    except ValueError:
        return (len(SOURCE_PRECEDENCE), source)


class EndpointSet:
    """The live ``EndpointState``s of ``service``, merged from every discovery source."""

    __slots__ = (
        "_all",
        "_by_source",
        "_callbacks",
        "_states",
        "last_change",
        "service",
        "version",
    )

    def __init__(self, service: str) -> None:
        self.service = service
        self.version = 0
        """Bumped whenever an endpoint is added, removed or changes weight/version/source."""
        # source -> canonical url -> spec (each source's current list)
        self._by_source: dict[str, dict[str, EndpointSpec]] = {}
        # canonical url -> state, in insertion order (stable order for readers)
        self._states: dict[str, EndpointState] = {}
        self._all: tuple[EndpointState, ...] = ()
        self._callbacks: list[ChangeCallback] = []
        self.last_change = EndpointChange()
        """What the most recent change added, removed and updated."""

    # -- reading ------------------------------------------------------------------------------

    def all(self) -> tuple[EndpointState, ...]:
        """Every endpoint (available or not); the same tuple object until the next change."""
        return self._all

    def get(self, url: str) -> EndpointState | None:
        """The state of ``url`` (any spelling), or None."""
        try:
            key = canonical_url(url)
        except ValueError:
            return None
        return self._states.get(key)

    def specs(self, source: str) -> tuple[EndpointSpec, ...]:
        """The list ``source`` last handed over (canonical URLs)."""
        return tuple(self._by_source.get(source, {}).values())

    def sources(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_source, key=_rank))

    def __len__(self) -> int:
        return len(self._all)

    def __repr__(self) -> str:
        return f"EndpointSet({self.service!r}, {len(self._all)} endpoints, v{self.version})"

    # -- changing -----------------------------------------------------------------------------

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback()`` after every change (``last_change`` tells what changed); returns
        a function that unsubscribes. A callback that raises is logged and skipped."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def replace(self, source: str, specs: Sequence[EndpointSpec]) -> bool:
        """Make ``specs`` the whole list of ``source``; returns True if the set changed.

        Every URL is checked first: a bad one raises ValueError and changes nothing. A URL
        listed twice by one source keeps its first entry."""
        incoming: dict[str, EndpointSpec] = {}
        for spec in specs:
            key = canonical_url(spec.url)
            if key in incoming:
                continue
            if spec.weight < 1:
                raise ValueError(f"{spec.url!r}: weight must be at least 1, not {spec.weight}")
            incoming[key] = EndpointSpec(key, spec.weight, spec.version, source, spec.expires_at)
        if incoming:
            self._by_source[source] = incoming
        else:
            self._by_source.pop(source, None)
        return self._rebuild()

    def clear(self, source: str) -> bool:
        """Forget everything ``source`` said."""
        return self.replace(source, ())

    def _rebuild(self) -> bool:
        # The winning spec of every URL: sources in precedence order, first one wins.
        winners: dict[str, EndpointSpec] = {}
        for source in sorted(self._by_source, key=_rank):
            for key, spec in self._by_source[source].items():
                winners.setdefault(key, spec)

        added: list[EndpointState] = []
        updated: list[EndpointState] = []
        removed = [state for key, state in self._states.items() if key not in winners]
        states: dict[str, EndpointState] = {}
        # Kept endpoints first, in their old order; new ones after, in source order.
        for key, old in self._states.items():
            chosen = winners.get(key)
            if chosen is None:
                continue
            wanted = (chosen.weight, chosen.version, chosen.source)
            if (old.weight, old.version, old.source) != wanted:
                old.weight, old.version, old.source = wanted
                updated.append(old)
            old.expires_at = chosen.expires_at
            states[key] = old
        for key, winner in winners.items():
            if key not in states:
                state = make_state(winner)
                states[key] = state
                added.append(state)

        self._states = states
        if not (added or removed or updated):
            return False
        self._all = tuple(states.values())
        self.version += 1
        self.last_change = EndpointChange(tuple(added), tuple(removed), tuple(updated))
        for callback in tuple(self._callbacks):
            try:
                callback()
            except Exception:
                log.exception("service %s: an endpoint-change callback failed", self.service)
        return True
