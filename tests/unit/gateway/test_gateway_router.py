"""The router: every match type, the precedence table, 405, hosts, headers/query
conditions, build errors, and a structural check that lookup work does not grow with the
number of routes."""

from __future__ import annotations

from typing import Any

import pytest

from sampan.gateway.config import MatchConfig
from sampan.gateway.router import MethodNotAllowed, RouteMatch, Router, RouterError
from sampan.http.headers import Headers


def build(*routes: tuple[str, dict[str, Any]]) -> Router[str]:
    return Router.build([(MatchConfig(**match), name) for name, match in routes])


def lookup(
    router: Router[str],
    path: str,
    *,
    method: str = "GET",
    host: str = "api.example.vn",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> RouteMatch[str] | MethodNotAllowed | None:
    return router.match(method, host, path, Headers(headers or []), query)


def name(router: Router[str], path: str, **kw: Any) -> str | None:
    found = lookup(router, path, **kw)
    if isinstance(found, MethodNotAllowed):
        return "405:" + ",".join(found.allow)
    return None if found is None else found.route


# --- match types -----------------------------------------------------------------------


def test_exact_path() -> None:
    r = build(("orders", {"path": "/orders"}))
    assert name(r, "/orders") == "orders"
    assert name(r, "/orders/") is None  # a trailing slash is a different path
    assert name(r, "/orders/1") is None
    assert name(r, "/ordersx") is None
    assert name(r, "/Orders") is None  # case-sensitive


def test_root_exact_and_root_prefix() -> None:
    r = build(("root", {"path": "/"}), ("all", {"path_prefix": "/"}))
    assert name(r, "/") == "root"
    found = lookup(r, "/x/y")
    assert isinstance(found, RouteMatch)
    assert (found.route, found.prefix) == ("all", "")


def test_template_params_are_percent_decoded() -> None:
    r = build(("order", {"path": "/orders/{id}/items/{item}"}))
    found = lookup(r, "/orders/a%20b/items/caf%C3%A9")
    assert isinstance(found, RouteMatch)
    assert found.params == {"id": "a b", "item": "café"}
    assert found.prefix is None
    assert name(r, "/orders/1/items") is None
    assert name(r, "/orders/1/items/2/3") is None
    assert name(r, "/orders/1/items/") is None  # {item} needs a non-empty segment


def test_template_with_trailing_slash_literal() -> None:
    r = build(("dir", {"path": "/d/{name}/"}))
    assert name(r, "/d/x/") == "dir"
    assert name(r, "/d/x") is None


def test_catch_all_parameter() -> None:
    r = build(("files", {"path": "/files/{rest...}"}))
    for path, rest in [("/files/a", "a"), ("/files/a/b/c", "a/b/c"), ("/files/", "")]:
        found = lookup(r, path)
        assert isinstance(found, RouteMatch), path
        assert found.params == {"rest": rest}
    assert name(r, "/files") is None
    assert name(r, "/filesx/a") is None


def test_prefix_on_segment_bounds() -> None:
    r = build(("api", {"path_prefix": "/api"}))
    for path in ("/api", "/api/", "/api/v1/x"):
        found = lookup(r, path)
        assert isinstance(found, RouteMatch), path
        assert found.prefix == "/api"
    assert name(r, "/apix") is None
    assert name(r, "/ap") is None


def test_prefix_trailing_slash_is_ignored() -> None:
    r = build(("api", {"path_prefix": "/api/"}))
    assert name(r, "/api") == "api"
    assert name(r, "/api/x") == "api"
    with pytest.raises(RouterError, match="same match conditions"):
        build(("a", {"path_prefix": "/api/"}), ("b", {"path_prefix": "/api"}))


def test_regex_is_a_full_match_with_named_groups() -> None:
    r = build(("v", {"path_regex": r"/v(?P<version>[0-9]+)/(?P<name>[^/]+)"}))
    found = lookup(r, "/v2/caf%C3%A9")
    assert isinstance(found, RouteMatch)
    assert found.params == {"version": "2", "name": "café"}
    assert name(r, "/v2/x/y") is None
    assert name(r, "/prefix/v2/x") is None


def test_no_path_condition_matches_every_path() -> None:
    r = build(("any", {"methods": ["GET"]}))
    assert name(r, "/") == "any"
    assert name(r, "/x/y") == "any"


def test_matrix_parameters_are_ignored_for_matching() -> None:
    r = build(
        ("admin", {"path_prefix": "/admin"}),
        ("order", {"path": "/orders/{id}"}),
        ("exact", {"path": "/x"}),
        ("all", {"path_prefix": "/"}),
    )
    assert name(r, "/admin;jsessionid=1") == "admin"
    assert name(r, "/admin;x/users") == "admin"
    assert name(r, "/;x/admin") == "admin"
    assert name(r, "/x;y=1") == "exact"
    found = lookup(r, "/orders/42;v=1")
    assert isinstance(found, RouteMatch)
    assert found.params == {"id": "42"}
    found = lookup(r, "/admin;a=b/users")
    assert isinstance(found, RouteMatch)
    assert found.prefix == "/admin;a=b"  # stripping it leaves /users
    found = lookup(r, "/;x/admin;y/users")
    assert isinstance(found, RouteMatch)
    assert found.prefix == "/;x/admin;y"


def test_prefix_for_strip_prefix() -> None:
    r = build(("a", {"path_prefix": "/api/v1"}))
    found = lookup(r, "/api/v1/orders")
    assert isinstance(found, RouteMatch)
    assert found.prefix == "/api/v1"
    assert "/api/v1/orders"[len(found.prefix) :] == "/orders"


# --- hosts -------------------------------------------------------------------------------


def test_hosts_exact_wildcard_and_none() -> None:
    r = build(
        ("exact", {"hosts": ["api.example.vn"], "path_prefix": "/"}),
        ("wild", {"hosts": ["*.example.vn"], "path_prefix": "/"}),
        ("deeper", {"hosts": ["*.b.example.vn"], "path_prefix": "/"}),
        ("none", {"path_prefix": "/"}),
    )
    assert name(r, "/", host="api.example.vn") == "exact"
    assert name(r, "/", host="shop.example.vn") == "wild"
    assert name(r, "/", host="x.y.example.vn") == "wild"  # one or more labels
    assert name(r, "/", host="a.b.example.vn") == "deeper"  # longer suffix first
    assert name(r, "/", host="example.vn") == "none"  # the wildcard needs a label
    assert name(r, "/", host=".example.vn") == "none"
    assert name(r, "/", host="other.vn") == "none"
    assert name(r, "/", host="") == "none"
    assert name(r, "/", host="api.example.vn.") == "exact"  # trailing dot of an FQDN


def test_host_names_are_normalised_at_build() -> None:
    r = build(
        ("a", {"hosts": ["API.Example.VN."], "path": "/"}),
        ("idn", {"hosts": ["cửahàng.vn"], "path": "/"}),
    )
    assert name(r, "/", host="api.example.vn") == "a"
    assert name(r, "/", host="cửahàng.vn".encode("idna").decode()) == "idn"


def test_route_with_several_hosts() -> None:
    r = build(("multi", {"hosts": ["a.vn", "*.b.vn"], "path": "/x"}), ("other", {"path": "/x"}))
    assert name(r, "/x", host="a.vn") == "multi"
    assert name(r, "/x", host="c.b.vn") == "multi"
    assert name(r, "/x", host="c.vn") == "other"


def test_host_tier_beats_path_specificity() -> None:
    r = build(
        ("host-prefix", {"hosts": ["api.example.vn"], "path_prefix": "/"}),
        ("any-host-exact", {"path": "/orders"}),
    )
    assert name(r, "/orders") == "host-prefix"
    assert name(r, "/orders", host="other.vn") == "any-host-exact"


def test_falls_through_to_less_specific_host_when_path_does_not_match() -> None:
    r = build(
        ("host", {"hosts": ["api.example.vn"], "path": "/a"}),
        ("wild", {"hosts": ["*.example.vn"], "path": "/b"}),
        ("none", {"path": "/c"}),
    )
    assert name(r, "/a") == "host"
    assert name(r, "/b") == "wild"
    assert name(r, "/c") == "none"


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("api.example.vn:8080", "without the port"),
        ("*", "leave hosts empty"),
        ("a.*.vn", "leftmost label"),
        ("*a.vn", "leftmost label"),
        ("a..vn", "invalid host"),
        ("", "empty host"),
        ("bad host", "invalid host"),
    ],
)
def test_invalid_hosts(host: str, message: str) -> None:
    with pytest.raises(RouterError, match=message) as info:
        build(("ok", {"path": "/"}), ("bad", {"hosts": [host], "path": "/x"}))
    assert info.value.index == 1
    assert "route #1" in str(info.value)


def test_ipv6_host() -> None:
    r = build(("v6", {"hosts": ["[::1]"], "path": "/"}))
    assert name(r, "/", host="[::1]") == "v6"


# --- methods, headers, query -------------------------------------------------------------


def test_method_not_allowed_lists_the_union_sorted() -> None:
    r = build(
        ("get", {"path": "/orders", "methods": ["get"]}),
        ("post", {"path": "/orders", "methods": ["POST", "PUT"]}),
        ("tpl", {"path": "/{x}", "methods": ["DELETE"]}),
    )
    assert name(r, "/orders", method="GET") == "get"
    assert name(r, "/orders", method="PUT") == "post"
    found = lookup(r, "/orders", method="PATCH")
    assert found == MethodNotAllowed(("DELETE", "GET", "POST", "PUT"))
    assert name(r, "/nothing/here", method="PATCH") is None


def test_a_full_match_anywhere_beats_405() -> None:
    r = build(("get", {"path": "/orders", "methods": ["GET"]}), ("all", {"path_prefix": "/"}))
    assert name(r, "/orders", method="POST") == "all"


def test_405_only_counts_routes_whose_other_conditions_match() -> None:
    r = build(
        ("v2", {"path": "/o", "methods": ["GET"], "headers": {"x-v": "2"}}),
        ("q", {"path": "/o", "methods": ["PUT"], "query": {"a": "1"}}),
    )
    assert name(r, "/o", method="POST") is None
    assert name(r, "/o", method="POST", headers=[(b"x-v", b"2")]) == "405:GET"
    assert name(r, "/o", method="POST", query=b"a=1") == "405:PUT"


def test_header_conditions() -> None:
    r = build(
        ("v2", {"path": "/o", "headers": {"X-Version": "2"}}),
        ("v2-beta", {"path": "/o", "headers": {"x-version": "2", "x-beta": "yes"}}),
        ("plain", {"path": "/o"}),
    )
    assert name(r, "/o") == "plain"
    assert name(r, "/o", headers=[(b"x-version", b"2")]) == "v2"
    assert name(r, "/o", headers=[(b"x-version", b" 2 ")]) == "v2"  # OWS trimmed
    assert name(r, "/o", headers=[(b"x-version", b"3")]) == "plain"
    both = [(b"x-version", b"2"), (b"x-beta", b"yes")]
    assert name(r, "/o", headers=both) == "v2-beta"  # more header conditions first
    repeated = [(b"x-version", b"1"), (b"x-version", b"2")]
    assert name(r, "/o", headers=repeated) == "v2"  # any occurrence may match
    assert name(r, "/o", headers=[(b"x-version", b"2"), (b"x-beta", b"YES")]) == "v2"


def test_query_conditions() -> None:
    r = build(
        ("vi", {"path": "/p", "query": {"lang": "vi"}}),
        ("vi-full", {"path": "/p", "query": {"lang": "vi", "full": "1"}}),
        ("space", {"path": "/p", "query": {"q": "a b"}}),
        ("vn", {"path": "/p", "query": {"city": "Hà Nội"}}),
        ("plain", {"path": "/p"}),
    )
    assert name(r, "/p") == "plain"
    assert name(r, "/p", query=b"lang=vi") == "vi"
    assert name(r, "/p", query=b"full=1&lang=vi") == "vi-full"
    assert name(r, "/p", query=b"lang=en&lang=vi") == "vi"
    assert name(r, "/p", query=b"lang=VI") == "plain"
    assert name(r, "/p", query=b"q=a+b") == "space"
    assert name(r, "/p", query=b"q=a%20b") == "space"
    assert name(r, "/p", query=b"city=H%C3%A0%20N%E1%BB%99i") == "vn"
    assert name(r, "/p", query=b"%zz=&&=;") == "plain"


def test_query_is_not_parsed_when_no_candidate_has_query_conditions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sampan.gateway.router as router_module

    calls: list[bytes] = []
    real = router_module._parse_query

    def spy(query: bytes) -> dict[str, list[str]]:
        calls.append(query)
        return real(query)

    monkeypatch.setattr(router_module, "_parse_query", spy)
    r = build(("q", {"path": "/q", "query": {"a": "1"}}), ("p", {"path": "/p"}))
    assert name(r, "/p", query=b"a=1") == "p"
    assert calls == []
    assert name(r, "/q", query=b"a=1") == "q"
    assert calls == [b"a=1"]


# --- precedence table --------------------------------------------------------------------

PRECEDENCE = [
    # (routes in config order, request path, expected winner)
    ([("prefix", {"path_prefix": "/orders"}), ("exact", {"path": "/orders"})], "/orders", "exact"),
    ([("tpl", {"path": "/orders/{id}"}), ("exact", {"path": "/orders/1"})], "/orders/1", "exact"),
    (
        [("prefix", {"path_prefix": "/orders"}), ("tpl", {"path": "/orders/{id}"})],
        "/orders/1",
        "tpl",
    ),
    (
        [("regex", {"path_regex": "/orders/.*"}), ("prefix", {"path_prefix": "/orders"})],
        "/orders/1",
        "prefix",
    ),
    ([("none", {}), ("regex", {"path_regex": "/orders/.*"})], "/orders/1", "regex"),
    ([("short", {"path_prefix": "/a"}), ("long", {"path_prefix": "/a/b"})], "/a/b/c", "long"),
    ([("root", {"path_prefix": "/"}), ("a", {"path_prefix": "/a"})], "/a", "a"),
    ([("r1", {"path_regex": "/a/.*"}), ("r2", {"path_regex": "/a/b"})], "/a/b", "r1"),
    ([("r2", {"path_regex": "/a/b"}), ("r1", {"path_regex": "/a/.*"})], "/a/b", "r2"),
    # templates: more literal segments, then fewer params, then catch-all last,
    # then literal segments earlier
    ([("p2", {"path": "/{a}/{b}/c"}), ("l2", {"path": "/x/{b}/c"})], "/x/y/c", "l2"),
    ([("catch", {"path": "/x/{rest...}"}), ("one", {"path": "/x/{id}"})], "/x/y", "one"),
    ([("late", {"path": "/a/{x}/c"}), ("early", {"path": "/a/b/{y}"})], "/a/b/c", "early"),
    ([("lit1", {"path": "/{a}/b/c"}), ("lit0", {"path": "/a/{b}/{c}"})], "/a/b/c", "lit1"),
    ([("deep", {"path": "/{rest...}"}), ("c2", {"path": "/a/{rest...}"})], "/a/b", "c2"),
    # then headers, query, methods, config order
    (
        [
            ("plain", {"path": "/o", "methods": ["GET"]}),
            ("hdr", {"path": "/o", "headers": {"x": "1"}}),
        ],
        "/o",
        "hdr",
    ),
    (
        [
            ("q", {"path": "/o", "query": {"a": "1"}}),
            ("hdr", {"path": "/o", "headers": {"x": "1"}}),
        ],
        "/o",
        "hdr",
    ),
    (
        [
            ("any", {"path": "/o", "query": {"a": "1"}}),
            ("qq", {"path": "/o", "query": {"a": "1", "b": "2"}}),
        ],
        "/o",
        "qq",
    ),
    ([("any", {"path": "/o"}), ("get", {"path": "/o", "methods": ["GET"]})], "/o", "get"),
    (
        [
            ("first", {"path": "/o", "methods": ["GET", "HEAD"]}),
            ("second", {"path": "/o", "methods": ["GET"]}),
        ],
        "/o",
        "first",
    ),
    # identical regexes share the first one's position; then headers decide
    (
        [
            ("rx", {"path_regex": "/r/.*"}),
            ("other", {"path_regex": "/r/x"}),
            ("rx-hdr", {"path_regex": "/r/.*", "headers": {"x": "1"}}),
        ],
        "/r/x",
        "rx-hdr",
    ),
]


@pytest.mark.parametrize(("routes", "path", "winner"), PRECEDENCE)
def test_precedence(routes: list[tuple[str, dict[str, Any]]], path: str, winner: str) -> None:
    r = build(*routes)
    assert name(r, path, headers=[(b"x", b"1")], query=b"a=1&b=2") == winner


# --- build errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ({"path_regex": r"(a)\1"}, "not supported by RE2"),
        ({"path_regex": r"/(?=admin)"}, "not supported by RE2"),
        ({"path_regex": r"/a{1001}"}, "not supported by RE2"),
        ({"path_regex": r"/(unclosed"}, "not supported by RE2"),
        ({"path": "/a/{id"}, "whole segment"),
        ({"path": "/a/x{id}"}, "whole segment"),
        ({"path": "/a/{id}/{id}"}, "appears twice"),
        ({"path": "/a/{rest...}/b"}, "last segment"),
        ({"path": "/a/{1x}"}, "whole segment"),
        ({"path": "/a//b"}, "empty segment"),
        ({"path": "/a/../b"}, "dot-segment"),
        ({"path": "/a/%2e/b"}, "dot-segment"),
        ({"path": "/a;x"}, "';'"),
        ({"path": "/a%zz"}, "invalid percent-encoding"),
        ({"path": "/a\\b"}, "backslash"),
        ({"path_prefix": "/a/{id}"}, "not supported in prefixes"),
    ],
)
def test_invalid_patterns(match: dict[str, Any], message: str) -> None:
    with pytest.raises(RouterError, match=message) as info:
        build(("ok", {"path": "/"}), ("bad", match))
    assert info.value.index == 1


@pytest.mark.parametrize("header", ["", "x y", "x:y", "tên"])
def test_invalid_header_names(header: str) -> None:
    with pytest.raises(RouterError, match="invalid header name"):
        build(("bad", {"path": "/", "headers": {header: "1"}}))


def test_identical_matchers_are_rejected_naming_both_routes() -> None:
    with pytest.raises(RouterError) as info:
        build(
            ("a", {"path": "/x", "methods": ["GET", "POST"]}),
            ("b", {"path": "/y"}),
            ("c", {"path": "/x", "methods": ["POST", "get"]}),
        )
    assert (info.value.index, info.value.other) == (2, 0)
    assert "route #2" in str(info.value) and "route #0" in str(info.value)


def test_identical_for_one_shared_host_is_rejected() -> None:
    with pytest.raises(RouterError, match=r"host 'a\.vn'") as info:
        build(
            ("a", {"hosts": ["a.vn", "b.vn"], "path": "/x"}),
            ("b", {"hosts": ["a.vn"], "path": "/x"}),
        )
    assert (info.value.index, info.value.other) == (1, 0)


def test_templates_differing_only_in_parameter_names_are_identical() -> None:
    with pytest.raises(RouterError, match="same match conditions"):
        build(("a", {"path": "/o/{id}"}), ("b", {"path": "/o/{name}"}))


def test_same_path_with_different_conditions_is_fine() -> None:
    r = build(
        ("a", {"path": "/x", "methods": ["GET"]}),
        ("b", {"path": "/x", "methods": ["POST"]}),
        ("c", {"path": "/x", "headers": {"x": "1"}}),
        ("d", {"path": "/x", "hosts": ["*.vn"]}),
    )
    assert name(r, "/x", method="POST", host="example.com") == "b"
    assert name(r, "/x", method="POST", host="example.vn") == "d"


def test_patterns_are_canonicalised_like_request_paths() -> None:
    r = build(("cafe", {"path": "/café/%7euser"}), ("sp", {"path_prefix": "/s%e1%ba%a3n"}))
    assert name(r, "/caf%C3%A9/~user") == "cafe"
    assert name(r, "/s%E1%BA%A3n/x") == "sp"


def test_build_is_deterministic_and_router_is_reusable() -> None:
    routes = [("a", {"path_prefix": "/"}), ("b", {"path": "/o/{id}"}), ("c", {"path": "/o/1"})]
    first, second = build(*routes), build(*routes)
    for path in ("/o/1", "/o/2", "/z"):
        assert lookup(first, path) == lookup(second, path) == lookup(first, path)


def test_empty_router() -> None:
    assert name(build(), "/") is None


# --- scale: lookup work does not grow with the table --------------------------------------


def big_router(n: int) -> Router[str]:
    routes: list[tuple[MatchConfig, str]] = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            match = MatchConfig(path=f"/svc{i}/orders")
        elif kind == 1:
            match = MatchConfig(path=f"/svc{i}/orders/{{id}}", methods=["GET"])
        elif kind == 2:
            match = MatchConfig(path_prefix=f"/svc{i}/static")
        elif kind == 3:
            match = MatchConfig(hosts=[f"h{i}.example.vn"], path=f"/svc{i}/x")
        else:
            match = MatchConfig(hosts=[f"*.t{i}.example.vn"], path_prefix="/", headers={"x": "1"})
        routes.append((match, f"r{i}"))
    routes.append((MatchConfig(path_prefix="/"), "catch-all"))
    return Router.build(routes)


@pytest.mark.parametrize("n", [50, 5000])
def test_lookup_examines_a_bounded_number_of_routes(n: int) -> None:
    r = big_router(n)
    i = (n // 2) // 5 * 5
    cases = [
        ("GET", "api.example.vn", f"/svc{i}/orders", f"r{i}"),
        ("GET", "api.example.vn", f"/svc{i + 1}/orders/42", f"r{i + 1}"),
        ("GET", "api.example.vn", f"/svc{i + 2}/static/css/site.css", f"r{i + 2}"),
        ("GET", f"h{i + 3}.example.vn", f"/svc{i + 3}/x", f"r{i + 3}"),
        ("GET", f"a.t{i + 4}.example.vn", "/anything", "catch-all"),  # header missing
        ("GET", "api.example.vn", "/no/such/route", "catch-all"),
        ("POST", "api.example.vn", f"/svc{i + 1}/orders/42", "catch-all"),
    ]
    for method, host, path, expected in cases:
        found, examined = r.explain(method, host, path, Headers(), b"")
        assert isinstance(found, RouteMatch)
        assert found.route == expected
        assert len(examined) <= 3, (path, examined)


def test_regex_routes_are_scanned_but_only_in_their_host_table() -> None:
    routes = [
        (MatchConfig(hosts=[f"h{i}.vn"], path_regex=f"/r{i}/.*"), f"r{i}") for i in range(2000)
    ]
    r = Router.build(routes)
    found, examined = r.explain("GET", "h1999.vn", "/r1999/x", Headers(), b"")
    assert isinstance(found, RouteMatch) and found.route == "r1999"
    assert examined == ["r1999"]
