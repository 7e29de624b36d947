"""Property tests: normalize_path is idempotent, canonical, and no spelling of a path under
/admin reaches the open catch-all instead of the guarded /admin route."""

from __future__ import annotations

import re
from typing import Literal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sampan.gateway.config import MatchConfig
from sampan.gateway.normalize import BadPath, normalize_path
from sampan.gateway.router import RouteMatch, Router
from sampan.http.headers import Headers

Mode = Literal["reject", "keep"]
MODES = st.sampled_from(["reject", "keep"])
UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"

# Pieces attackers combine; the generator glues them together in any order.
TOKENS = [
    "/", "//", "admin", "adm", "in", "x", "a", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e",
    "%2f", "%2F", "%5c", "%5C", "\\", ";", ";x=1", ";jsessionid=1", "%3b", "%3B", "%00",
    "%", "%4", "%zz", "%61", "%64", "%6d", "%69", "%6e", "%61dmin", "%7e", "~", " ",
    "é", "%c3%a9", "%ff", "%252e", "?", "#", "\t", "ADMIN", "%41",
]  # fmt: skip
ATTACK_PATHS = st.lists(st.sampled_from(TOKENS), max_size=12).map(lambda t: "/" + "".join(t))
ANY_PATHS = st.text(max_size=40).map(lambda s: "/" + s)
PATHS = st.one_of(ATTACK_PATHS, ANY_PATHS)

GUARDED, OPEN = "guarded-admin", "open-catch-all"
ROUTER: Router[str] = Router.build(
    [(MatchConfig(path_prefix="/admin"), GUARDED), (MatchConfig(path_prefix="/"), OPEN)]
)


def route_of(path: str) -> str | None:
    found = ROUTER.match("GET", "api.example.vn", path, Headers(), b"")
    return found.route if isinstance(found, RouteMatch) else None


def norm(raw: str, mode: Mode) -> str | None:
    try:
        return normalize_path(raw, encoded_slash=mode)
    except BadPath:
        return None


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def lenient_segments(raw: str, mode: Mode) -> list[str]:
    """How a lenient upstream (Tomcat-like) reads a path: ';' parameters stripped from
    every raw segment, then everything percent-decoded once, '\\' read as '/', then empty
    and dot segments resolved. With encoded_slash="keep" the upstream is trusted not to
    decode %2F / %5C (that is what "keep" means)."""
    stripped = "/".join(seg.split(";", 1)[0] for seg in raw.split("/"))

    def decode(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        if mode == "keep" and char in "/\\":
            return m.group()
        return char

    decoded = _ESCAPE.sub(decode, stripped).replace("\\", "/")
    out: list[str] = []
    for seg in decoded.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return out


@given(PATHS, MODES)
@example("/x/%2e%2e/admin", "reject")
@example("/admin;jsessionid=1", "reject")
def test_idempotent(raw: str, mode: Mode) -> None:
    once = norm(raw, mode)
    if once is not None:
        assert normalize_path(once, encoded_slash=mode) == once


@given(PATHS, MODES)
def test_output_is_canonical(raw: str, mode: Mode) -> None:
    out = norm(raw, mode)
    if out is None:
        return
    assert out.startswith("/")
    for bad in ("//", "/./", "/../"):
        assert bad not in out
    assert not out.endswith(("/.", "/.."))
    assert out.isascii()
    assert "\\" not in out
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in out)
    for hx in _ESCAPE.findall(out):
        assert hx == hx.upper()
        assert chr(int(hx, 16)) not in UNRESERVED
    if mode == "reject":
        assert "%2F" not in out and "%5C" not in out


@st.composite
def unreserved_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """A path, and the same path with some unreserved characters percent-encoded."""
    segs = draw(
        st.lists(
            st.one_of(
                st.text(alphabet=UNRESERVED + "%;=", min_size=0, max_size=8),
                st.sampled_from(["admin", "orders", "42", ".", ".."]),
            ),
            max_size=6,
        )
    )
    plain = "/" + "/".join(s.replace("%", "") for s in segs)
    spelled = []
    for char in plain:
        if char in UNRESERVED and draw(st.booleans()):
            hx = f"{ord(char):02x}"
            spelled.append("%" + (hx.upper() if draw(st.booleans()) else hx))
        else:
            spelled.append(char)
    return plain, "".join(spelled)


SPELLING_ROUTER: Router[str] = Router.build(
    [
        (MatchConfig(path="/orders/{id}"), "order"),
        (MatchConfig(path="/orders"), "orders"),
        (MatchConfig(path_prefix="/admin"), "admin"),
        (MatchConfig(path_regex=r"/v[0-9]+/.*"), "versioned"),
        (MatchConfig(path_prefix="/"), "rest"),
    ]
)


@given(unreserved_spellings(), MODES)
def test_decoding_unreserved_never_changes_the_route(pair: tuple[str, str], mode: Mode) -> None:
    plain, spelled = pair
    a, b = norm(plain, mode), norm(spelled, mode)
    assert a == b
    if a is not None and b is not None:
        assert SPELLING_ROUTER.match("GET", "", a, Headers(), b"") == SPELLING_ROUTER.match(
            "GET", "", b, Headers(), b""
        )


@settings(max_examples=500)
@given(PATHS, MODES)
@example("//admin", "reject")
@example("/x/%2e%2e/admin", "reject")
@example("/%2e%2e/admin", "reject")
@example("/admin;jsessionid=1", "reject")
@example("/;x/admin", "reject")
@example("/public/..;/admin", "keep")
@example("/x%2F..%2Fadmin", "reject")
@example("/x/..%2f/admin", "reject")
def test_no_bypass_of_the_guarded_prefix(raw: str, mode: Mode) -> None:
    out = norm(raw, mode)
    if out is None:
        return  # rejected with 400: never reaches any route
    if out == "/admin" or out.startswith(("/admin/", "/admin;")):
        assert route_of(out) == GUARDED, (raw, out)
    # However a lenient upstream would read the raw path, if it means /admin... then the
    # gateway either refused the request or routed it to the guarded route.
    lenient = lenient_segments(raw, mode)
    if lenient and lenient[0] == "admin":
        assert route_of(out) == GUARDED, (raw, out, lenient)
