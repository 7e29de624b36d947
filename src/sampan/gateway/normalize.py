"""Request-path normalisation: one canonical spelling per path, before anything matches on it.

Routing and auth see the normalised path, so two spellings of the same resource can never
be routed differently. The rules (see docs/routing.md for the attack table):

- the path starts with ``/`` (an empty path is ``/``); ``?`` and ``#`` cannot appear in it;
- percent-encoded *unreserved* characters (``A-Z a-z 0-9 - . _ ~``) are decoded; every other
  escape stays encoded with upper-case hex (``%3f`` -> ``%3F``), so the upstream sees the
  same meaning; raw characters that are not allowed in a path (space, ``"``, ``{``,
  non-ASCII, ...) are percent-encoded (non-ASCII as UTF-8);
- ``%2F`` and ``%5C`` (encoded ``/`` and ``\\``) are rejected, or kept encoded with
  ``encoded_slash="keep"``: never decoded into a separator;
- rejected: a raw backslash, raw control characters, ``%00`` and every other encoded control
  character, invalid escapes (``%zz``, ``%4``), bytes that are not UTF-8 once decoded, and a
  dot-segment carrying parameters (``..;x``, which some servers read as ``..``);
- duplicate slashes are merged, then dot-segments are removed (RFC 3986 5.2.4); a path
  climbing above the root stays at the root (``/../x`` -> ``/x``), like browsers do;
- ``;`` parameters and letter case are kept as sent (the router ignores ``;`` parameters
  when matching; matching is case-sensitive).
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import unquote_to_bytes

__all__ = ["BadPath", "normalize_path"]


class BadPath(ValueError):
    """A request path the gateway refuses (answered with 400); ``reason`` is the detail."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters that may appear raw in a canonical path: unreserved, sub-delims, ':', '@', '/'.
_PATH_CHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@/"
_SIMPLE = re.compile(rf"/[{_PATH_CHARS}]*")
_NEEDS_ENCODING = re.compile(rf"[^{_PATH_CHARS}]")
_NEEDS_ENCODING_BESIDES_ESCAPES = re.compile(rf"[^{_PATH_CHARS}%]")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\?#]")
_HIGH_ESCAPE = re.compile(r"%[89A-F]")


def _encode_char(m: re.Match[str]) -> str:
    try:
        data = m.group().encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the target bytes were not UTF-8
        raise BadPath("the path is not valid UTF-8") from None
    return "".join(f"%{b:02X}" for b in data)


def _encode_raw(text: str) -> str:
    return _NEEDS_ENCODING.sub(_encode_char, text) if _NEEDS_ENCODING.search(text) else text


def _escape_table() -> dict[str, str]:
    """Every two-hex-digit spelling -> its canonical form ('' marks a byte handled apart:
    NUL, control characters, '/' and '\\')."""
    table: dict[str, str] = {}
    for byte in range(256):
        char = chr(byte)
        if byte < 0x20 or byte == 0x7F or char in "/\\":
            canon = ""
        elif char in _UNRESERVED:
            canon = char
        else:
            canon = f"%{byte:02X}"
        hx = f"{byte:02x}"
        for spelling in {hx, hx.upper(), hx[0].upper() + hx[1], hx[0] + hx[1].upper()}:
            table[spelling] = canon
    return table


_ESCAPES = _escape_table()


def _decode_escapes(raw: str, encoded_slash: Literal["reject", "keep"]) -> str:
    encode = _encode_raw if _NEEDS_ENCODING_BESIDES_ESCAPES.search(raw) else str
    pieces = raw.split("%")
    out = [encode(pieces[0])]
    escapes = _ESCAPES
    for piece in pieces[1:]:
        hx = piece[:2]
        canon = escapes.get(hx)
        if not canon:
            if canon is None:
                raise BadPath(f"invalid percent-encoding %{hx} in the path")
            byte = int(hx, 16)
            if byte == 0:
                raise BadPath("encoded NUL (%00) in the path")
            if byte not in (0x2F, 0x5C):
                raise BadPath(f"encoded control character (%{byte:02X}) in the path")
            if encoded_slash != "keep":
                what = "/" if byte == 0x2F else "\\"
                raise BadPath(f"encoded '{what}' (%{byte:02X}) in the path")
            canon = f"%{byte:02X}"
        out.append(canon)
        out.append(encode(piece[2:]))
    return "".join(out)


def _check_utf8(path: str) -> None:
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath("the path is not valid UTF-8 once percent-decoded") from None


def _remove_dot_segments(path: str) -> str:
    stack: list[str] = []
    trailing = False
    for seg in path.split("/")[1:]:
        if seg in ("", "."):
            trailing = True
        elif seg == "..":
            if stack:
                stack.pop()
            trailing = True
        else:
            if ";" in seg and seg.split(";", 1)[0] in (".", ".."):
                raise BadPath("dot-segment with ';' parameters ('..;') in the path")
            stack.append(seg)
            trailing = False
    if not stack:
        return "/"
    return "/" + "/".join(stack) + ("/" if trailing else "")


def normalize_path(raw: str, *, encoded_slash: Literal["reject", "keep"]) -> str:
    """Return the canonical form of the request path ``raw`` (without the query), or raise
    :class:`BadPath`. ``raw`` is text: a server should decode the request-target bytes as
    UTF-8 with ``errors="surrogateescape"`` (bytes that are not UTF-8 are then rejected).

    Idempotent: ``normalize_path(normalize_path(p)) == normalize_path(p)``.
    """
    # Fast path: nothing to decode, encode, merge or remove (no '%', no '//', no '/.').
    if _SIMPLE.fullmatch(raw) and "//" not in raw and "/." not in raw:
        return raw
    if not raw:
        return "/"
    if raw[0] != "/":
        raise BadPath("the path must start with '/'")
    bad = _FORBIDDEN.search(raw)
    if bad is not None:
        char = bad.group()
        if char == "\\":
            raise BadPath("backslash in the path")
        if char in "?#":
            raise BadPath(f"{char!r} in the path (the query must be split off)")
        raise BadPath(f"control character (0x{ord(char):02X}) in the path")
    path = _decode_escapes(raw, encoded_slash) if "%" in raw else _encode_raw(raw)
    if _HIGH_ESCAPE.search(path):
        _check_utf8(path)
    return _remove_dot_segments(path)
