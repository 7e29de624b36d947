"""The gateway router: picks the most specific route for a request, deterministically.

Specificity (docs/routing.md), compared in this order, smaller first:

1. host: exact name > wildcard (longer suffix first) > no ``hosts``;
2. path: exact > template (more literal segments, then fewer parameters, then a final
   catch-all last, then literal segments earlier) > prefix (longer first) > regex (config
   order; identical regexes share the first one's position) > no path condition;
3. more header conditions; 4. more query conditions; 5. restricted methods before any
   method; 6. config order.

Lookup is a dict per exact host and per wildcard suffix, and inside each host table a dict
of exact paths, a segment trie for templates and one for prefixes, then the regex list
(scanned in order, like every gateway does) and the routes without a path condition. The
work per request depends on the path's depth and on how many routes share one host and path
condition, not on the size of the table.

``match`` expects ``host`` lower-cased without the port and ``path`` already normalised by
:func:`sampan.gateway.normalize.normalize_path`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote

from sampan.gateway.config import MatchConfig
from sampan.gateway.route_pattern import (
    CATCH_ALL,
    PathPattern,
    PatternError,
    compile_host,
    compile_path,
)
from sampan.http.headers import Headers

__all__ = ["MethodNotAllowed", "RouteMatch", "Router", "RouterError"]

T = TypeVar("T")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[T]):
    """The chosen route. ``params`` are the template (or named regex group) values,
    percent-decoded. ``prefix`` is set for ``path_prefix`` routes: the part of the request
    path the prefix covered, never ending in ``/`` (``""`` for the prefix ``/``), so
    ``path[len(prefix):] or "/"`` is the path with the prefix stripped."""

    route: T
    params: dict[str, str]
    prefix: str | None = None


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    """Routes matched everything but the method: answer 405 with ``Allow``."""

    allow: tuple[str, ...]


class RouterError(ValueError):
    """A route the router cannot accept; ``index`` is its position in the route list and
    ``other`` the position of the route it conflicts with, if any."""

    def __init__(self, index: int, message: str, *, other: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.other = other


class _Entry:
    """One route inside one group (same host entry, same path condition)."""

    __slots__ = ("headers", "index", "methods", "param_names", "query", "route", "sort_key")

    def __init__(
        self,
        route: Any,
        index: int,
        methods: frozenset[str] | None,
        headers: tuple[tuple[bytes, bytes], ...],
        query: tuple[tuple[str, str], ...],
        param_names: tuple[str, ...],
    ) -> None:
        self.route = route
        self.index = index
        self.methods = methods
        self.headers = headers
        self.query = query
        self.param_names = param_names
        self.sort_key = (-len(headers), -len(query), 0 if methods is not None else 1, index)


class _Group:
    __slots__ = ("entries", "pattern", "rank")

    def __init__(self, pattern: PathPattern, rank: tuple[int, ...]) -> None:
        self.pattern = pattern
        self.rank = rank
        self.entries: list[_Entry] | tuple[_Entry, ...] = []


class _Node:
    """A segment-trie node (templates use all fields; prefixes only ``lit`` and ``end``)."""

    __slots__ = ("catch", "end", "lit", "param")

    def __init__(self) -> None:
        self.lit: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.end: _Group | None = None
        self.catch: _Group | None = None


class _Table:
    """Every route of one host entry."""

    __slots__ = ("any_path", "exact", "prefixes", "regexes", "templates")

    def __init__(self) -> None:
        self.exact: dict[str, _Group] = {}
        self.templates: _Node | None = None
        self.prefixes: _Node | None = None
        self.regexes: list[_Group] = []
        self.any_path: _Group | None = None


class _Lookup:
    """The state of one ``match`` call."""

    __slots__ = ("allow", "headers", "method", "parsed", "query", "segs", "trace")

    def __init__(
        self, method: str, headers: Headers, query: bytes, trace: list[Any] | None
    ) -> None:
        self.method = method
        self.headers = headers
        self.query = query
        self.parsed: dict[str, list[str]] | None = None
        self.allow: set[str] | None = None
        self.segs: list[str] | None = None
        self.trace = trace

    def pick(self, entries: Sequence[_Entry]) -> _Entry | None:
        trace = self.trace
        for e in entries:
            if trace is not None:
                trace.append(e.route)
            if e.headers and not _headers_ok(e.headers, self.headers):
                continue
            if e.query:
                parsed = self.parsed
                if parsed is None:
                    parsed = self.parsed = _parse_query(self.query)
                if not _query_ok(e.query, parsed):
                    continue
            if e.methods is not None and self.method not in e.methods:
                if self.allow is None:
                    self.allow = set()
                self.allow.update(e.methods)
                continue
            return e
        return None


def _headers_ok(wanted: tuple[tuple[bytes, bytes], ...], headers: Headers) -> bool:
    items = headers.items
    for name, value in wanted:
        for key, got in items:
            if key == name and got.strip(b" \t") == value:
                break
        else:
            return False
    return True


def _parse_query(query: bytes) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    text = query.decode("utf-8", "surrogateescape")
    for name, value in parse_qsl(text, keep_blank_values=True):
        parsed.setdefault(name, []).append(value)
    return parsed


def _query_ok(wanted: tuple[tuple[str, str], ...], parsed: dict[str, list[str]]) -> bool:
    for name, value in wanted:
        values = parsed.get(name)
        if values is None or value not in values:
            return False
    return True


def _decode(value: str) -> str:
    return unquote(value) if "%" in value else value


def _match_key(path: str) -> str:
    """The path the router compares: ``;`` parameters dropped from every segment and the
    segments they leave empty removed (``/admin;x`` -> ``/admin``, ``/;x/a`` -> ``/a``), so
    a parameter can never steer a request away from the route of its resource."""
    segs = [s.split(";", 1)[0] for s in path.split("/")[1:]]
    kept = [s for s in segs[:-1] if s]
    kept.append(segs[-1])
    if len(kept) > 1 or kept[0]:
        return "/" + "/".join(kept)
    return "/"


def _real_prefix(path: str, nsegs: int) -> str:
    """The part of ``path`` (which has ``;`` parameters) covering ``nsegs`` match-key
    segments, so stripping it leaves the rest of the path intact."""
    if nsegs == 0:
        return ""
    pos = 0
    count = 0
    for seg in path[1:].split("/"):
        pos += 1 + len(seg)
        if seg.split(";", 1)[0]:
            count += 1
            if count == nsegs:
                break
    return path[:pos]


def _collect(
    node: _Node, segs: list[str], i: int, values: list[str], out: list[tuple[_Group, list[str]]]
) -> None:
    if i == len(segs):
        if node.end is not None:
            out.append((node.end, list(values)))
        return
    if node.catch is not None:
        out.append((node.catch, [*values, "/".join(segs[i:])]))
    seg = segs[i]
    child = node.lit.get(seg)
    if child is not None:
        _collect(child, segs, i + 1, values, out)
    if node.param is not None and seg:
        values.append(seg)
        _collect(node.param, segs, i + 1, values, out)
        values.pop()


class Router(Generic[T]):
    """Immutable once built; safe to share between tasks. Rebuild to change routes."""

    __slots__ = ("_any_host", "_exact_hosts", "_wild_hosts")

    def __init__(self) -> None:
        self._exact_hosts: dict[str, _Table] = {}
        self._wild_hosts: dict[str, _Table] = {}
        self._any_host: _Table = _Table()

    @classmethod
    def build(cls, routes: Sequence[tuple[MatchConfig, T]]) -> Router[T]:
        """Compile ``(match, payload)`` pairs. Raises :class:`RouterError` for an invalid
        host, path or regex, and for a route whose conditions are identical to an earlier
        route's for one of its hosts (it could never be chosen)."""
        router: Router[T] = cls()
        seen: dict[tuple[Any, ...], int] = {}
        for index, (match, payload) in enumerate(routes):
            try:
                pattern = compile_path(match.path, match.path_prefix, match.path_regex)
                hosts = sorted({compile_host(h) for h in match.hosts})
            except PatternError as exc:
                raise RouterError(index, f"route #{index}: {exc}") from None
            bad = [h for h in match.headers if not _TOKEN.fullmatch(h.strip())]
            if bad:
                raise RouterError(index, f"route #{index}: invalid header name {bad[0]!r}")
            methods = frozenset(m.upper() for m in match.methods) or None
            headers = tuple(
                sorted(
                    (name.strip().lower().encode("latin-1"), value.strip().encode("utf-8"))
                    for name, value in match.headers.items()
                )
            )
            query = tuple(sorted(match.query.items()))
            entry = _Entry(payload, index, methods, headers, query, pattern.param_names)
            host_entries: list[tuple[str, str] | None] = [*hosts] or [None]
            for host in host_entries:
                identity = (host, pattern.kind, pattern.key, methods, headers, query)
                if identity in seen:
                    first = seen[identity]
                    where = f"host {host[1]!r}" if host else "any host"
                    if host and host[0] == "wildcard":
                        where = f"host '*{host[1]}'"
                    raise RouterError(
                        index,
                        f"route #{index} has the same match conditions as route #{first} "
                        f"({where}, path {pattern.key or '(any)'!r}); it could never be "
                        "chosen: remove one or add a condition",
                        other=first,
                    )
                seen[identity] = index
                _add(router._table_for(host), pattern, entry)
        for table in router._tables():
            _finish(table)
        return router

    def _table_for(self, host: tuple[str, str] | None) -> _Table:
        if host is None:
            return self._any_host
        registry = self._exact_hosts if host[0] == "exact" else self._wild_hosts
        table = registry.get(host[1])
        if table is None:
            table = registry[host[1]] = _Table()
        return table

    def _tables(self) -> list[_Table]:
        return [*self._exact_hosts.values(), *self._wild_hosts.values(), self._any_host]

    def match(
        self, method: str, host: str, path: str, headers: Headers, query: bytes
    ) -> RouteMatch[T] | MethodNotAllowed | None:
        """The most specific route matching the request; :class:`MethodNotAllowed` when
        none matches but some match everything except the method; ``None`` otherwise."""
        return self._match(method, host, path, headers, query, None)

    def explain(
        self, method: str, host: str, path: str, headers: Headers, query: bytes
    ) -> tuple[RouteMatch[T] | MethodNotAllowed | None, list[T]]:
        """Like :meth:`match`, also returning the routes examined, in order (for debugging
        and for the test that lookup work does not grow with the table)."""
        trace: list[T] = []
        return self._match(method, host, path, headers, query, trace), trace

    def _match(
        self,
        method: str,
        host: str,
        path: str,
        headers: Headers,
        query: bytes,
        trace: list[Any] | None,
    ) -> RouteMatch[T] | MethodNotAllowed | None:
        lk = _Lookup(method, headers, query, trace)
        key = _match_key(path) if ";" in path else path
        if host:
            if host[-1] == ".":
                host = host[:-1]
            table = self._exact_hosts.get(host)
            if table is not None:
                found = _scan(table, key, path, lk)
                if found is not None:
                    return found
            wild = self._wild_hosts
            if wild:
                dot = host.find(".", 1)
                while dot > 0:
                    table = wild.get(host[dot:])
                    if table is not None:
                        found = _scan(table, key, path, lk)
                        if found is not None:
                            return found
                    dot = host.find(".", dot + 1)
        found = _scan(self._any_host, key, path, lk)
        if found is not None:
            return found
        if lk.allow is not None:
            return MethodNotAllowed(tuple(sorted(lk.allow)))
        return None


def _add(table: _Table, pattern: PathPattern, entry: _Entry) -> None:
    kind = pattern.kind
    if kind == "exact":
        group = table.exact.get(pattern.key)
        if group is None:
            group = table.exact[pattern.key] = _Group(pattern, ())
    elif kind == "template":
        node = table.templates
        if node is None:
            node = table.templates = _Node()
        segs = pattern.segments
        for seg in segs[:-1] if segs[-1] == CATCH_ALL else segs:
            if isinstance(seg, str):
                child = node.lit.get(seg)
                if child is None:
                    child = node.lit[seg] = _Node()
            else:
                child = node.param
                if child is None:
                    child = node.param = _Node()
            node = child
        if segs[-1] == CATCH_ALL:
            if node.catch is None:
                node.catch = _Group(pattern, pattern.rank)
            group = node.catch
        else:
            if node.end is None:
                node.end = _Group(pattern, pattern.rank)
            group = node.end
    elif kind == "prefix":
        node = table.prefixes
        if node is None:
            node = table.prefixes = _Node()
        for seg in pattern.segments:
            assert isinstance(seg, str)
            child = node.lit.get(seg)
            if child is None:
                child = node.lit[seg] = _Node()
            node = child
        if node.end is None:
            node.end = _Group(pattern, pattern.rank)
        group = node.end
    elif kind == "regex":
        for group in table.regexes:
            if group.pattern.key == pattern.key:
                break
        else:
            group = _Group(pattern, (entry.index,))
            table.regexes.append(group)
    else:
        if table.any_path is None:
            table.any_path = _Group(pattern, ())
        group = table.any_path
    assert isinstance(group.entries, list)
    group.entries.append(entry)


def _finish(table: _Table) -> None:
    groups: list[_Group] = [*table.exact.values(), *table.regexes]
    if table.any_path is not None:
        groups.append(table.any_path)
    stack = [n for n in (table.templates, table.prefixes) if n is not None]
    while stack:
        node = stack.pop()
        groups.extend(g for g in (node.end, node.catch) if g is not None)
        stack.extend(node.lit.values())
        if node.param is not None:
            stack.append(node.param)
    for group in groups:
        group.entries = tuple(sorted(group.entries, key=lambda e: e.sort_key))


def _scan(table: _Table, key: str, path: str, lk: _Lookup) -> RouteMatch[Any] | None:
    group = table.exact.get(key)
    if group is not None:
        e = lk.pick(group.entries)
        if e is not None:
            return RouteMatch(e.route, {})
    if table.templates is not None or table.prefixes is not None:
        segs = lk.segs
        if segs is None:
            segs = lk.segs = key[1:].split("/")
        if table.templates is not None:
            found: list[tuple[_Group, list[str]]] = []
            _collect(table.templates, segs, 0, [], found)
            if len(found) > 1:
                found.sort(key=lambda item: item[0].rank)
            for group, values in found:
                e = lk.pick(group.entries)
                if e is not None:
                    params = {n: _decode(v) for n, v in zip(e.param_names, values, strict=True)}
                    return RouteMatch(e.route, params)
        node = table.prefixes
        if node is not None:
            hits: list[tuple[_Group, int]] = []
            if node.end is not None:
                hits.append((node.end, 0))
            for depth, seg in enumerate(segs, 1):
                child = node.lit.get(seg)
                if child is None:
                    break
                node = child
                if node.end is not None:
                    hits.append((node.end, depth))
            for group, depth in reversed(hits):
                e = lk.pick(group.entries)
                if e is not None:
                    if path is key:
                        prefix = group.pattern.key if depth else ""
                    else:
                        prefix = _real_prefix(path, depth)
                    return RouteMatch(e.route, {}, prefix)
    for group in table.regexes:
        m = group.pattern.regex.fullmatch(key)
        if m is not None:
            e = lk.pick(group.entries)
            if e is not None:
                params = {n: _decode(v) for n, v in m.groupdict().items() if v is not None}
                return RouteMatch(e.route, params)
    group = table.any_path
    if group is not None:
        e = lk.pick(group.entries)
        if e is not None:
            return RouteMatch(e.route, {})
    return None
