from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sampan.gateway.config import PluginEntry
from sampan.gateway.plugins.base import Plugin, PluginOptions
from sampan.gateway.plugins.errors import PluginConfigError
from sampan.gateway.plugins.registry import build_chain, build_plugin, plugin_docs, plugin_types

ROOT = Path(__file__).resolve().parents[4]


def test_types_are_complete_and_documented() -> None:
    types = plugin_types()
    assert list(types) == [
        "request-id",
        "cors",
        "ip-restriction",
        "request-size-limit",
        "webhook-signature",
        "jwt",
        "key-auth",
        "acl",
        "rate-limit",
        "request-transformer",
        "response-transformer",
    ]
    assert plugin_types() is not types  # built per call
    for name, cls in types.items():
        assert cls.name == name and issubclass(cls, Plugin)
        assert issubclass(cls.Options, PluginOptions)
        assert cls.Options.model_config.get("extra") == "forbid"
        for field_name, info in cls.Options.model_fields.items():
            assert info.description, f"{name}.{field_name} has no description"


def test_unknown_and_invalid(env_factory) -> None:
    with pytest.raises(PluginConfigError) as info:
        build_plugin("nope", {}, env_factory())
    assert "unknown plugin" in info.value.errors[0][1]
    with pytest.raises(PluginConfigError) as info:
        build_plugin("rate-limit", {"rate": "many", "typo": 1}, env_factory())
    assert info.value.name == "rate-limit"
    assert {path for path, _ in info.value.errors} == {"rate", "typo"}
    assert info.value.validation_error is not None


def test_chain_order_and_override(env_factory) -> None:
    global_entries = [
        PluginEntry(name="rate-limit", config={"rate": 100}),
        PluginEntry(name="request-id"),
        PluginEntry(name="cors", config={"origins": ["*"]}),
    ]
    route_entries = [
        PluginEntry(name="acl", config={"allow": ["a"]}),
        PluginEntry(name="key-auth"),
        PluginEntry(name="rate-limit", config={"rate": 5}),  # overrides the global one
        PluginEntry(name="cors", config={"origins": ["*"]}, enabled=False),  # global one off here
    ]
    chain = build_chain(global_entries, route_entries, env_factory())
    assert [p.name for p in chain] == ["request-id", "key-auth", "acl", "rate-limit"]
    assert chain[-1].options.rate == 5


def test_chain_shares_prebuilt_global_instances(env_factory) -> None:
    shared = build_plugin("request-id", {}, env_factory(route=None))
    chain_a = build_chain([shared], [], env_factory(route="a"))
    chain_b = build_chain([shared], [], env_factory(route="b"))
    assert chain_a[0] is chain_b[0] is shared


def test_chain_error_is_located(env_factory) -> None:
    with pytest.raises(PluginConfigError) as info:
        build_chain(
            [PluginEntry(name="request-id")],
            [
                PluginEntry(name="key-auth"),
                PluginEntry.model_construct(name="acl", config={"allow": "x"}, enabled=True),
            ],
            env_factory(),
        )
    assert (info.value.scope, info.value.index, info.value.errors[0][0]) == ("route", 1, "allow")


def test_committed_doc_is_current() -> None:
    committed = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    marker = "<!-- BEGIN GENERATED: scripts/gen_plugin_docs.py -->\n"
    assert marker in committed
    assert committed.split(marker, 1)[1] == plugin_docs(), (
        "docs/plugins.md is stale: run python scripts/gen_plugin_docs.py"
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_plugin_docs.py"), "--check"],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
