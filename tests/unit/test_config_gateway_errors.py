"""Gateway and mesh sections report their errors at the file position of the bad value."""

from __future__ import annotations

import pytest

from sampan.config import ConfigError, parse_config_text


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    return [issue.format() for issue in info.value.issues]


def test_unknown_plugin_and_bad_plugin_option_are_located() -> None:
    text = (
        "routes:\n"
        "  - name: pay\n"
        "    match: {path: /pay}\n"
        "    target: {respond: {status: 200}}\n"
        "    plugins: [{name: key-auht}, {name: rate-limit, config: {rate: -1}}]\n"
    )
    found = issues(text)
    assert found[0].startswith(
        "sampan.yaml:5:22 routes[0].plugins[0].name: unknown plugin 'key-auht' (expected one of:"
    )
    assert found[1] == "sampan.yaml:5:67 routes[0].plugins[1].config.rate: must be > 0, got -1"


def test_global_plugin_errors_are_located() -> None:
    text = "gateway:\n  plugins:\n    - name: cors\n      config: {origins: [], max_age: soon}\n"
    found = issues(text)
    assert any(
        line.startswith("sampan.yaml:4:38 gateway.plugins[0].config.max_age") for line in found
    ), found


def test_disabled_entry_needs_no_options() -> None:
    text = (
        "gateway:\n  plugins: [{name: request-id}]\n"
        "routes:\n  - name: r\n    match: {path: /r}\n    target: {respond: {status: 204}}\n"
        "    plugins: [{name: cors, enabled: false}]\n"
    )
    assert parse_config_text(text).routes[0].plugins[0].enabled is False


def test_route_naming_an_unknown_service_is_located() -> None:
    text = (
        "services:\n"
        "  - name: payments\n"
        '    endpoints: [{url: "http://127.0.0.1:9001"}]\n'
        "routes:\n"
        "  - name: pay\n"
        "    match: {path: /pay}\n"
        "    target: {service: {service: paymnts}}\n"
    )
    assert issues(text) == [
        "sampan.yaml:7:33 routes[0].target.service.service: no service named 'paymnts' in"
        " `services:` (known: payments)"
    ]


def test_duplicate_route_names_and_target_shape() -> None:
    text = (
        "routes:\n"
        "  - name: a\n    match: {path: /a}\n    target: {respond: {status: 200}}\n"
        "  - name: a\n    match: {path: /b}\n    target: {}\n"
    )
    found = issues(text)
    assert any(
        "routes[1].target: give exactly one of service, topic, respond" in f for f in found
    ), found


def test_mesh_retry_conditions_survive_yaml_1_1_booleans() -> None:
    """`on:` would be read as the boolean true by YAML; the key is `retry_on`."""
    text = (
        "services:\n"
        "  - name: payments\n"
        '    endpoints: [{url: "http://127.0.0.1:9001"}]\n'
        '    retry: {attempts: 3, retry_on: [connect, reset, "503"]}\n'
    )
    assert parse_config_text(text).services[0].retry.retry_on == ["connect", "reset", "503"]
