"""Path normalisation: the canonical form, the rejections and the attack spellings."""

from __future__ import annotations

import pytest

from sampan.gateway.config import MatchConfig
from sampan.gateway.normalize import BadPath, normalize_path
from sampan.gateway.router import RouteMatch, Router
from sampan.http.headers import Headers


def norm(raw: str, encoded_slash: str = "reject") -> str:
    return normalize_path(raw, encoded_slash=encoded_slash)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("", "/"),
        ("/orders/42", "/orders/42"),
        ("/orders/", "/orders/"),
        ("//admin", "/admin"),
        ("/a//b///c", "/a/b/c"),
        ("/a/b//", "/a/b/"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/b/c/./../../g", "/a/g"),
        ("/..", "/"),
        ("/../x", "/x"),
        ("/../../../etc/passwd", "/etc/passwd"),
        ("/a//../b", "/b"),  # duplicate slashes merge before dot-segments are removed
        ("/x/%2e%2e/admin", "/admin"),
        ("/%2e%2e/admin", "/admin"),
        ("/%2E%2e/admin", "/admin"),
        ("/x/.%2e/admin", "/admin"),
        ("/x/%2e/admin", "/x/admin"),
        ("/%7euser/%41%62%63", "/~user/Abc"),
        ("/a%2db%5fc%2e", "/a-b_c."),
        ("/a%3fb", "/a%3Fb"),
        ("/a%3Fb", "/a%3Fb"),
        ("/q%23x", "/q%23x"),
        ("/a%25b", "/a%25b"),
        ("/%252e%252e/admin", "/%252e%252e/admin"),  # one level of decoding only
        ("/a%3bb", "/a%3Bb"),
        ("/a b", "/a%20b"),
        ("/a%20b", "/a%20b"),
        ('/a"<>{}|^`', "/a%22%3C%3E%7B%7D%7C%5E%60"),
        ("/café", "/caf%C3%A9"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/s%E1%BA%A3n-ph%E1%BA%A9m", "/s%E1%BA%A3n-ph%E1%BA%A9m"),
        ("/sản-phẩm", "/s%E1%BA%A3n-ph%E1%BA%A9m"),
        ("/admin;jsessionid=1", "/admin;jsessionid=1"),
        ("/ADMIN", "/ADMIN"),
        ("/.well-known/openid-configuration", "/.well-known/openid-configuration"),
        ("/a/...", "/a/..."),
        ("/a/..x", "/a/..x"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    ],
)
def test_canonical_form(raw: str, expected: str) -> None:
    assert norm(raw) == expected
    assert norm(expected) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/x%2F..%2Fadmin", "encoded '/'"),
        ("/x/..%2f/admin", "encoded '/'"),
        ("/a%5cb", "encoded '\\'"),
        ("/a\\b", "backslash"),
        ("/..\\admin", "backslash"),
        ("/a%00b", "NUL"),
        ("/a\x00b", "control character"),
        ("/a\nb", "control character"),
        ("/a\x7fb", "control character"),
        ("/a%0d%0aSet-Cookie:x", "control character"),
        ("/a%7F", "control character"),
        ("/a%zz", "invalid percent-encoding"),
        ("/a%4", "invalid percent-encoding"),
        ("/a%", "invalid percent-encoding"),
        ("/a%+1", "invalid percent-encoding"),
        ("/a% 1", "invalid percent-encoding"),
        ("/%u002e%u002e/admin", "invalid percent-encoding"),
        ("/%ff", "UTF-8"),
        ("/%c3", "UTF-8"),
        ("/%c0%ae%c0%ae/admin", "UTF-8"),  # overlong '.'
        ("/%c3é", "UTF-8"),
        ("/\udcff", "UTF-8"),  # a byte that was not UTF-8, via surrogateescape
        ("/..;/admin", "dot-segment"),
        ("/public/..;x=1/admin", "dot-segment"),
        ("/.;/admin", "dot-segment"),
        ("/%2e%2e;/admin", "dot-segment"),
        ("admin", "start with '/'"),
        ("*", "start with '/'"),
        ("/a?b", "query"),
        ("/a#b", "query"),
    ],
)
def test_rejected(raw: str, reason: str) -> None:
    with pytest.raises(BadPath) as info:
        norm(raw)
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/x%2F..%2Fadmin", "/x%2F..%2Fadmin"),
        ("/x/..%2f/admin", "/x/..%2F/admin"),
        ("/a%5cb", "/a%5Cb"),
        ("/a%2fb/../c", "/c"),
        ("/files/a%2Fb.txt", "/files/a%2Fb.txt"),
    ],
)
def test_encoded_slash_kept_never_decoded(raw: str, expected: str) -> None:
    assert norm(raw, "keep") == expected


def test_backslash_rejected_even_when_encoded_slashes_are_kept() -> None:
    with pytest.raises(BadPath, match="backslash"):
        norm("/a\\b", "keep")


def test_reason_does_not_echo_long_client_input() -> None:
    with pytest.raises(BadPath) as info:
        norm("/..;" + "x" * 5000 + "/admin")
    assert len(info.value.reason) < 200


# The attack table of docs/routing.md: (path, encoded_slash) -> route, or None for a 400.
ATTACKS = [
    ("//admin", "reject", "guarded"),
    ("/x/%2e%2e/admin", "reject", "guarded"),
    ("/%2e%2e/admin", "reject", "guarded"),
    ("/../admin", "reject", "guarded"),
    ("/../../admin", "reject", "guarded"),
    ("/x%2F..%2Fadmin", "reject", None),
    ("/x%2F..%2Fadmin", "keep", "open"),
    ("/x/..%2f/admin", "reject", None),
    ("/x/..%2f/admin", "keep", "open"),
    ("/..\\admin", "reject", None),
    ("/..\\admin", "keep", None),
    ("/a%5c..%5cadmin", "reject", None),
    ("/a%5c..%5cadmin", "keep", "open"),
    ("/admin;jsessionid=1", "reject", "guarded"),
    ("/public/..;/admin", "reject", None),
    ("/admin%00", "reject", None),
    ("/admin%0d%0a", "reject", None),
    ("/%c0%ae%c0%ae/admin", "reject", None),
    ("/%252e%252e/admin", "reject", "open"),
    ("/ADMIN", "reject", "open"),
]


@pytest.mark.parametrize(("raw", "mode", "route"), ATTACKS)
def test_attack_table_of_the_docs(raw: str, mode: str, route: str | None) -> None:
    router = Router.build(
        [(MatchConfig(path_prefix="/admin"), "guarded"), (MatchConfig(path_prefix="/"), "open")]
    )
    try:
        path = norm(raw, mode)
    except BadPath:
        assert route is None
        return
    found = router.match("GET", "api.example.vn", path, Headers(), b"")
    assert isinstance(found, RouteMatch)
    assert found.route == route
