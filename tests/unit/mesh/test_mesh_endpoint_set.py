"""EndpointSet: merging discovery sources while keeping the state of endpoints that stay."""

from __future__ import annotations

import pytest

from sampan.mesh.endpoint_set import EndpointSet, EndpointSpec, canonical_url, make_state


def urls(endpoint_set: EndpointSet) -> list[str]:
    return [state.url for state in endpoint_set.all()]


def test_replace_keeps_states_of_urls_that_stay() -> None:
    endpoints = EndpointSet("orders")
    endpoints.replace(
        "dns", [EndpointSpec("http://10.0.0.1:80"), EndpointSpec("http://10.0.0.2:80")]
    )
    first, second = endpoints.all()
    first.requests = 41
    first.ewma = 0.05
    first.healthy = False

    changed = endpoints.replace(
        "dns", [EndpointSpec("http://10.0.0.2:80"), EndpointSpec("http://10.0.0.3:80")]
    )

    assert changed
    assert urls(endpoints) == ["http://10.0.0.2", "http://10.0.0.3"]
    assert endpoints.all()[0] is second
    assert endpoints.get("http://10.0.0.1") is None
    assert endpoints.last_change.added[0].url == "http://10.0.0.3"
    assert endpoints.last_change.removed == (first,)
    # Back again: a fresh state (the removed one's counters are gone).
    endpoints.replace("dns", [EndpointSpec("http://10.0.0.1:80")])
    again = endpoints.get("http://10.0.0.1:80")
    assert again is not None and again is not first and again.requests == 0


def test_all_is_cached_and_version_moves_only_on_change() -> None:
    endpoints = EndpointSet("orders")
    assert endpoints.all() == () and endpoints.version == 0
    specs = [EndpointSpec("http://a:8080", weight=2, version="v1")]
    assert endpoints.replace("static", specs)
    snapshot = endpoints.all()
    assert endpoints.version == 1
    assert not endpoints.replace("static", specs)
    assert endpoints.all() is snapshot and endpoints.version == 1
    # A weight change keeps the object, bumps the version and reports it as updated.
    state = snapshot[0]
    assert endpoints.replace("static", [EndpointSpec("http://a:8080", weight=5, version="v2")])
    assert endpoints.all()[0] is state and (state.weight, state.version) == (5, "v2")
    assert endpoints.last_change.updated == (state,)
    assert endpoints.version == 2
    assert len(endpoints) == 1


def test_sources_merge_and_precedence_decides_attributes() -> None:
    endpoints = EndpointSet("pay")
    endpoints.replace("registered", [EndpointSpec("http://h:1", weight=9, expires_at=50.0)])
    endpoints.replace("dns", [EndpointSpec("http://h:1", weight=3), EndpointSpec("http://h:2")])
    endpoints.replace("static", [EndpointSpec("HTTP://H:1/", weight=1, version="v1")])
    assert urls(endpoints) == ["http://h:1", "http://h:2"]
    shared = endpoints.all()[0]
    assert (shared.source, shared.weight, shared.version) == ("static", 1, "v1")
    assert endpoints.sources() == ("static", "dns", "registered")
    # Static drops it: dns takes over, same object.
    endpoints.replace("static", [])
    assert endpoints.all()[0] is shared
    assert (shared.source, shared.weight) == ("dns", 3)
    # dns drops it too: the registration keeps it alive.
    endpoints.replace("dns", [EndpointSpec("http://h:2")])
    assert endpoints.get("http://h:1") is shared
    assert (shared.source, shared.weight, shared.expires_at) == ("registered", 9, 50.0)
    endpoints.clear("registered")
    assert urls(endpoints) == ["http://h:2"]


def test_bad_url_changes_nothing() -> None:
    endpoints = EndpointSet("orders")
    endpoints.replace("static", [EndpointSpec("http://a:1")])
    before = endpoints.all()
    with pytest.raises(ValueError, match="scheme"):
        endpoints.replace("static", [EndpointSpec("http://b:1"), EndpointSpec("ftp://c:1")])
    with pytest.raises(ValueError, match="weight"):
        endpoints.replace("static", [EndpointSpec("http://b:1", weight=0)])
    assert endpoints.all() is before


def test_on_change_callbacks_and_unsubscribe() -> None:
    endpoints = EndpointSet("orders")
    calls: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    endpoints.on_change(broken)  # logged, does not stop the others
    unsubscribe = endpoints.on_change(lambda: calls.append(len(endpoints.all())))
    endpoints.replace("static", [EndpointSpec("http://a:1"), EndpointSpec("http://a:1")])
    endpoints.replace("static", [EndpointSpec("http://a:1")])  # no change, no call
    endpoints.replace("dns", [EndpointSpec("http://a:2")])
    unsubscribe()
    unsubscribe()
    endpoints.replace("dns", [])
    assert calls == [1, 2]


def test_canonical_urls_and_make_state() -> None:
    assert canonical_url("http://Example.COM:80/") == "http://example.com"
    assert canonical_url("https://[::1]:8443/base/") == "https://[::1]:8443/base"
    state = make_state(EndpointSpec("https://[::1]:8443/api/", weight=4, source="dns"))
    assert state.url == "https://[::1]:8443/api"
    assert (state.endpoint.host, state.endpoint.port, state.endpoint.tls) == ("::1", 8443, True)
    assert (state.base_path, state.weight, state.source) == ("/api", 4, "dns")
