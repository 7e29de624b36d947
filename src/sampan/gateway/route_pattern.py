"""Compiling one route's host and path conditions (used by ``gateway/router.py``).

Path patterns are written in the same canonical form the normaliser produces (percent
escapes are canonicalised here; empty and dot segments are refused), so a pattern can be
compared with a normalised request path segment by segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import re2

from sampan.gateway.normalize import BadPath, normalize_path

__all__ = [
    "CATCH_ALL",
    "PARAM",
    "PathPattern",
    "PatternError",
    "compile_host",
    "compile_path",
    "compile_regex",
]


class PatternError(ValueError):
    """An invalid host or path pattern; the message says what to write instead."""


PARAM = 1
CATCH_ALL = 2
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")

PathKind = Literal["exact", "template", "prefix", "regex", "any"]


@dataclass(frozen=True, slots=True)
class PathPattern:
    """One compiled path condition.

    ``key`` identifies the set of paths matched (template parameter names are left out of
    it: ``/a/{x}`` and ``/a/{y}`` have the same key); ``rank`` orders patterns of one kind
    by specificity (smaller first).
    """

    kind: PathKind
    key: str
    segments: tuple[str | int, ...] = ()  # literal segment, PARAM or CATCH_ALL
    param_names: tuple[str, ...] = ()
    rank: tuple[int, ...] = ()
    regex: Any = None  # compiled re2 pattern for kind == "regex"


def _canonical_segment(seg: str, pattern: str) -> str:
    if ";" in seg:
        raise PatternError(
            f"';' in path pattern {pattern!r}: ';' parameters are ignored when matching, "
            "leave them out of the pattern"
        )
    try:
        canon = normalize_path("/" + seg, encoded_slash="keep")[1:]
    except BadPath as exc:
        raise PatternError(f"path pattern {pattern!r}: {exc.reason}") from None
    if canon in ("", ".", "..") and seg != "":
        raise PatternError(f"path pattern {pattern!r} has a dot-segment; write it in normal form")
    return canon


def _split_pattern(pattern: str) -> list[str]:
    if not pattern.startswith("/"):
        raise PatternError(f"paths start with '/', got {pattern!r}")
    parts = pattern[1:].split("/")
    for i, seg in enumerate(parts):
        if seg == "" and i != len(parts) - 1:
            raise PatternError(
                f"path pattern {pattern!r} has an empty segment ('//'); write it in normal form"
            )
        decoded = seg.replace("%2e", ".").replace("%2E", ".")
        if decoded in (".", ".."):
            raise PatternError(
                f"path pattern {pattern!r} has a dot-segment; write it in normal form"
            )
    return parts


def _exact(pattern: str) -> PathPattern:
    parts = _split_pattern(pattern)
    key = "/" + "/".join(_canonical_segment(s, pattern) for s in parts)
    return PathPattern("exact", key)


def _template(pattern: str) -> PathPattern:
    parts = _split_pattern(pattern)
    segments: list[str | int] = []
    names: list[str] = []
    key_parts: list[str] = []
    for i, seg in enumerate(parts):
        if "{" not in seg and "}" not in seg:
            canon = _canonical_segment(seg, pattern)
            segments.append(canon)
            key_parts.append(canon)
            continue
        m = _PARAM_RE.fullmatch(seg)
        if m is None:
            raise PatternError(
                f"path template {pattern!r}: a parameter is a whole segment like {{id}} "
                "(or a final {rest...}); for anything else use path_regex"
            )
        name, catch_all = m.group(1), m.group(2) is not None
        if name in names:
            raise PatternError(f"path template {pattern!r}: parameter {name!r} appears twice")
        if catch_all and i != len(parts) - 1:
            raise PatternError(f"path template {pattern!r}: {{{name}...}} must be the last segment")
        names.append(name)
        segments.append(CATCH_ALL if catch_all else PARAM)
        key_parts.append("{...}" if catch_all else "{}")
    literals = sum(1 for s in segments if isinstance(s, str))
    catch = 1 if segments[-1] == CATCH_ALL else 0
    shape = tuple(0 if isinstance(s, str) else s for s in segments)
    rank = (-literals, len(names), catch, *shape)
    return PathPattern("template", "/" + "/".join(key_parts), tuple(segments), tuple(names), rank)


def _prefix(pattern: str) -> PathPattern:
    trimmed = pattern.rstrip("/") if pattern != "/" else pattern
    if not trimmed:
        trimmed = "/"
    if "{" in trimmed or "}" in trimmed:
        raise PatternError(
            f"path_prefix {pattern!r}: templates are not supported in prefixes; "
            "use path with a final {rest...} parameter"
        )
    if trimmed == "/":
        return PathPattern("prefix", "/", (), (), (0,))
    parts = _split_pattern(trimmed)
    canon = tuple(_canonical_segment(s, pattern) for s in parts)
    return PathPattern("prefix", "/" + "/".join(canon), canon, (), (-len(canon),))


def compile_regex(pattern: str) -> Any:
    """Compile ``pattern`` with RE2 (linear time, no backtracking); raise PatternError with
    RE2's reason when it refuses the pattern (backreferences, lookaround, huge repeats)."""
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(
            f"path_regex {pattern!r} is not supported by RE2 (linear-time engine: no "
            f"backreferences or lookaround): {reason}"
        ) from None


def compile_path(path: str | None, path_prefix: str | None, path_regex: str | None) -> PathPattern:
    """Compile the (at most one) path condition of a route."""
    if path is not None:
        if "{" in path or "}" in path:
            return _template(path)
        return _exact(path)
    if path_prefix is not None:
        return _prefix(path_prefix)
    if path_regex is not None:
        rx = compile_regex(path_regex)
        names = tuple(sorted(rx.groupindex, key=lambda n: rx.groupindex[n]))
        return PathPattern("regex", path_regex, (), names, (), rx)
    return PathPattern("any", "")


HostKind = Literal["exact", "wildcard"]


def compile_host(host: str) -> tuple[HostKind, str]:
    """Return ``("exact", name)`` or ``("wildcard", ".suffix")`` for a ``hosts`` entry.

    Names are lower-cased, a trailing dot is dropped and non-ASCII names are IDNA-encoded
    (clients send the ``xn--`` form). A wildcard is a leftmost ``*.`` label and matches one
    or more labels: ``*.example.vn`` matches ``a.example.vn`` and ``a.b.example.vn``, not
    ``example.vn``.
    """
    name = host.strip().lower()
    if name.endswith(".") and name != ".":
        name = name[:-1]
    if not name:
        raise PatternError("empty host name")
    if name.startswith("[") and name.endswith("]") and ":" in name:
        if not re.fullmatch(r"\[[0-9a-f:.]+\]", name):
            raise PatternError(f"invalid IPv6 host {host!r}")
        return "exact", name
    if ":" in name:
        raise PatternError(f"host {host!r}: hosts are matched without the port; drop ':port'")
    wildcard = name.startswith("*.")
    bare = name[2:] if wildcard else name
    if name == "*":
        raise PatternError("host '*': leave hosts empty to match any host")
    if not bare.isascii():
        try:
            bare = bare.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise PatternError(f"host {host!r} is not a valid name: {exc}") from None
    labels = bare.split(".")
    if "*" in bare or not all(_LABEL.fullmatch(label) for label in labels):
        raise PatternError(
            f"invalid host {host!r}: use a name (api.example.vn) or a wildcard as the "
            "leftmost label only (*.example.vn)"
        )
    return ("wildcard", "." + bare) if wildcard else ("exact", bare)
