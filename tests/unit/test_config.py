"""Unit tests for sampan.yaml loading: models, defaults and every kind of located error."""

from __future__ import annotations

import importlib.util
import os
import pickle
import socket
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from sampan.bus.retry import RetryPolicy
from sampan.config import (
    SCHEMA_ID,
    BusConfig,
    ConfigError,
    ConfigIssue,
    RetryConfig,
    SampanConfig,
    config_json_schema,
    load_config,
    parse_config_text,
)
from sampan.config_loader import format_key_path, interpolate
from sampan.units import parse_byte_size, parse_duration

REPO = Path(__file__).resolve().parents[2]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def issues_of(path: Path | str, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    return info.value.issues


def text_issues(text: str, **kwargs: object) -> list[ConfigIssue]:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        parse_config_text(textwrap.dedent(text).lstrip("\n"), **kwargs)  # type: ignore[arg-type]
    return info.value.issues


def only(issues: list[ConfigIssue]) -> ConfigIssue:
    assert len(issues) == 1, [i.format() for i in issues]
    return issues[0]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so relative file names read like a user's would."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


GOOD = """
node:
  name: shop-1
  data_dir: state
  admin: {enabled: false, host: 0.0.0.0, port: 8081}
  shutdown_grace: 1m
  python_path: [handlers, /opt/lib]
bus:
  url: nats://nats:4222
  durability: normal
  auto_create_topics: false
  lease: 45s
  poll_interval: 20ms
  fetch_batch: 100
  max_in_flight_per_group: 500
  maintenance_interval: 2s
  retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 10s, multiplier: 3, jitter: 0}
  retention: {max_age: 2d, max_bytes: 1GiB}
  topics:
    - name: orders
    - name: payments.v1
      retention: {max_age: null, max_bytes: 512MB}
subscriptions:
  - topic: orders
    group: billing
    handler: shop.billing:on_order
    concurrency: 4
    start: latest
    retry: {max_attempts: 1}
tasks:
  - run: shop.sync:poll
    options: {every: 5, names: [a, b]}
"""


# ------------------------------------------------------------------- good configs


def test_good_file_loads_every_key(in_tmp: Path) -> None:
    path = write(in_tmp, "conf/sampan.yaml", GOOD)
    config = load_config(path, env={})
    assert config.node.name == "shop-1"
    assert config.node.data_dir == in_tmp / "conf" / "state"
    assert config.node.data_dir.is_absolute()
    assert config.node.python_path == [in_tmp / "conf" / "handlers", Path("/opt/lib")]
    assert config.node.admin.model_dump() == {"enabled": False, "host": "0.0.0.0", "port": 8081}
    assert config.node.shutdown_grace == 60.0
    bus = config.bus
    assert (bus.url, bus.durability, bus.auto_create_topics) == (
        "nats://nats:4222",
        "normal",
        False,
    )
    assert (bus.lease, bus.poll_interval, bus.maintenance_interval) == (45.0, 0.02, 2.0)
    assert (bus.fetch_batch, bus.max_in_flight_per_group) == (100, 500)
    assert bus.retry == RetryConfig(
        max_attempts=3, initial_backoff=0.1, max_backoff=10.0, multiplier=3.0, jitter=0.0
    )
    assert (bus.retention.max_age, bus.retention.max_bytes) == (172800.0, 2**30)
    assert [t.name for t in bus.topics] == ["orders", "payments.v1"]
    assert bus.topics[0].retention is None
    assert bus.topics[1].retention is not None
    assert bus.topics[1].retention.max_age is None
    assert bus.topics[1].retention.max_bytes == 512 * 10**6
    (sub,) = config.subscriptions
    assert (sub.topic, sub.group, sub.handler) == ("orders", "billing", "shop.billing:on_order")
    assert (sub.concurrency, sub.start) == (4, "latest")
    assert sub.retry is not None
    assert sub.retry.max_attempts == 1
    (task,) = config.tasks
    assert task.run == "shop.sync:poll"
    assert task.options == {"every": 5, "names": ["a", "b"]}


def test_empty_file_gives_all_defaults(in_tmp: Path) -> None:
    path = write(in_tmp, "sampan.yaml", "# nothing configured yet\n")
    config = load_config("sampan.yaml", env={})
    assert config.node.name == socket.gethostname()
    assert config.node.data_dir == path.parent / "data"
    assert config.node.admin.model_dump() == {"enabled": True, "host": "127.0.0.1", "port": 9090}
    assert config.node.shutdown_grace == 10.0
    assert config.node.python_path == []
    bus = config.bus
    assert bus.url is None
    assert bus.durability == "full"
    assert bus.auto_create_topics is True
    assert (bus.lease, bus.poll_interval, bus.maintenance_interval) == (30.0, 0.05, 5.0)
    assert (bus.fetch_batch, bus.max_in_flight_per_group) == (256, 10000)
    assert bus.retry == RetryConfig()
    assert (bus.retry.max_attempts, bus.retry.initial_backoff, bus.retry.max_backoff) == (
        5,
        0.2,
        30.0,
    )
    assert (bus.retry.multiplier, bus.retry.jitter) == (2.0, 0.2)
    assert (bus.retention.max_age, bus.retention.max_bytes) == (7 * 86400.0, None)
    assert bus.topics == []
    assert config.subscriptions == [] and config.tasks == []
    assert parse_config_text("", env={}) == parse_config_text("{}", env={})


def test_parse_text_without_base_dir_keeps_relative_paths() -> None:
    config = parse_config_text("node: {data_dir: state, python_path: [lib]}", env={})
    assert config.node.data_dir == Path("state")
    assert config.node.python_path == [Path("lib")]
    anchored = parse_config_text("node: {data_dir: state}", env={}, base_dir=Path("/srv/app"))
    assert anchored.node.data_dir == Path("/srv/app/state")


def test_data_dir_tilde_and_absolute(in_tmp: Path) -> None:
    write(in_tmp, "a.yaml", "node: {data_dir: /var/lib/sampan}")
    assert load_config("a.yaml", env={}).node.data_dir == Path("/var/lib/sampan")
    write(in_tmp, "b.yaml", "node: {data_dir: ~/sampan}")
    assert load_config("b.yaml", env={}).node.data_dir == Path.home() / "sampan"


def test_resolved_url_defaults_to_sqlite_in_data_dir() -> None:
    bus = BusConfig()
    assert bus.resolved_url(Path("/var/lib/sampan")) == "sqlite:////var/lib/sampan/bus.db"
    assert bus.resolved_url(Path("data")) == "sqlite:///data/bus.db"
    assert BusConfig(url="redis://r:6379/0").resolved_url(Path("/x")) == "redis://r:6379/0"


def test_retry_policy_carries_every_setting() -> None:
    retry = RetryConfig(
        max_attempts=7, initial_backoff=0.5, max_backoff=9, multiplier=1.5, jitter=1
    )
    assert retry.policy() == RetryPolicy(
        max_attempts=7, initial_backoff=0.5, max_backoff=9.0, multiplier=1.5, jitter=1.0
    )


@pytest.mark.parametrize("scheme", ["sqlite", "nats", "redis", "rediss", "memory"])
def test_bus_url_allowed_schemes(scheme: str) -> None:
    assert parse_config_text(f"bus: {{url: '{scheme}://x'}}", env={}).bus.url == f"{scheme}://x"


def test_merge_keys_and_anchors() -> None:
    text = """
    bus:
      retry: &fast {max_attempts: 2, initial_backoff: 10ms}
    subscriptions:
      - {topic: a, group: g, handler: "m:f", retry: {<<: *fast, max_attempts: 9}}
      - {topic: b, group: g, handler: "m:f", retry: *fast}
    """
    config = parse_config_text(textwrap.dedent(text), env={})
    first, second = (s.retry for s in config.subscriptions)
    assert first is not None and second is not None
    assert (first.max_attempts, first.initial_backoff) == (9, 0.01)
    assert (second.max_attempts, second.initial_backoff) == (2, 0.01)


# -------------------------------------------------------------- located errors


def test_issue_format() -> None:
    issue = ConfigIssue("sampan.yaml", 14, 7, "bus.retry.max_attempts", "must be >= 1, got 0")
    assert issue.format() == "sampan.yaml:14:7 bus.retry.max_attempts: must be >= 1, got 0"
    assert ConfigIssue("a.yaml", 2, 3, "", "bad").format() == "a.yaml:2:3: bad"
    assert ConfigIssue("a.yaml", 0, 0, "", "file not found").format() == "a.yaml: file not found"
    err = ConfigError([issue, ConfigIssue("a.yaml", 2, 3, "", "bad")])
    assert str(err) == f"{issue.format()}\na.yaml:2:3: bad"
    copy = pickle.loads(pickle.dumps(err))
    assert copy.issues == err.issues and str(copy) == str(err)


def test_key_path_format() -> None:
    assert format_key_path(("bus", "topics", 2, "name")) == "bus.topics[2].name"
    assert format_key_path(("tasks", 0, "options", "a b")) == "tasks[0].options['a b']"
    assert format_key_path(()) == ""


def test_bound_error_points_at_value(in_tmp: Path) -> None:
    write(
        in_tmp,
        "sampan.yaml",
        """
        bus:
          retry:
            max_attempts: 0
        """,
    )
    issue = only(issues_of("sampan.yaml"))
    assert issue.format() == "sampan.yaml:3:19 bus.retry.max_attempts: must be >= 1, got 0"


def test_relative_file_name_stays_relative(in_tmp: Path) -> None:
    write(in_tmp, "conf/sampan.yaml", "node:\n  admin: {port: 70000}\n")
    issue = only(issues_of(os.path.join("conf", "sampan.yaml")))
    assert issue.format() == "conf/sampan.yaml:2:17 node.admin.port: must be <= 65535, got 70000"


def test_missing_key_points_at_parent_mapping() -> None:
    issues = text_issues(
        """
        subscriptions:
          - topic: orders
            group: billing
          - handler: m:f
        """
    )
    assert [i.format() for i in issues] == [
        "sampan.yaml:2:5 subscriptions[0].handler: required key is missing",
        "sampan.yaml:4:5 subscriptions[1].topic: required key is missing",
        "sampan.yaml:4:5 subscriptions[1].group: required key is missing",
    ]


def test_unknown_key_lists_expected_keys() -> None:
    issue = only(text_issues("bus:\n  retry:\n    max_atempts: 3\n"))
    assert issue.format() == (
        "sampan.yaml:3:5 bus.retry.max_atempts: unknown key (expected one of: max_attempts,"
        " initial_backoff, max_backoff, multiplier, jitter)"
    )
    top = only(text_issues("gatway: {}\n"))
    assert top.format() == (
        "sampan.yaml:1:1 gatway: unknown key (expected one of: node, bus, subscriptions, tasks,"
        " gateway, consumers, routes, services, mesh, store, flows)"
    )


def test_literal_error_lists_choices() -> None:
    issue = only(text_issues("bus:\n  durability: fast\n"))
    assert issue.format() == (
        "sampan.yaml:2:15 bus.durability: must be one of 'full', 'normal', got 'fast'"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bus: {fetch_batch: abc}", "1:20 bus.fetch_batch: must be an integer, got 'abc'"),
        ("bus: {fetch_batch: 1.5}", "1:20 bus.fetch_batch: must be an integer, got 1.5"),
        ("bus: {retry: {jitter: x}}", "1:23 bus.retry.jitter: must be a number, got 'x'"),
        (
            "node: {admin: {enabled: maybe}}",
            "1:25 node.admin.enabled: must be true or false, got 'maybe'",
        ),
        ("bus: {url: 5}", "1:12 bus.url: must be a string, got 5"),
        ("bus: {topics: {name: a}}", "1:15 bus.topics: must be a list, got a mapping"),
        ("bus: [1]", "1:6 bus: must be a mapping, got a list"),
        ("bus: {lease: 0}", "1:14 bus.lease: must be > 0, got 0"),
        ("bus: {retry: {jitter: 1.5}}", "1:23 bus.retry.jitter: must be <= 1, got 1.5"),
        (
            "bus: {retry: {initial_backoff: -1}}",
            "1:32 bus.retry.initial_backoff: must be >= 0, got -1",
        ),
    ],
)
def test_type_and_bound_messages(text: str, expected: str) -> None:
    assert only(text_issues(text)).format() == f"sampan.yaml:{expected}"


def test_root_must_be_a_mapping() -> None:
    assert (
        only(text_issues("- a\n- b\n")).format() == "sampan.yaml:1:1: must be a mapping, got a list"
    )


def test_bus_url_scheme_is_checked() -> None:
    issues = text_issues("bus:\n  url: http://broker\n")
    assert only(issues).format() == (
        "sampan.yaml:2:8 bus.url: unsupported scheme 'http'"
        " (expected one of: sqlite, nats, redis, rediss, memory)"
    )
    no_scheme = only(text_issues("bus: {url: broker:4222}"))
    assert (no_scheme.line, no_scheme.column, no_scheme.path) == (1, 12, "bus.url")
    assert "scheme one of: sqlite, nats, redis, rediss, memory" in no_scheme.message


def test_errors_inside_list_items() -> None:
    issues = text_issues(
        """
        bus:
          topics:
            - name: ok
            - name: "has space"
            - name: also-ok
              retention:
                max_bytes: lots
        subscriptions:
          - topic: ok
            group: g
            handler: not-an-import-path
        tasks:
          - run: m:f
            options: {a: 1}
            extra: 2
        """
    )
    assert [(i.line, i.column, i.path) for i in issues] == [
        (4, 13, "bus.topics[1].name"),
        (7, 20, "bus.topics[2].retention.max_bytes"),
        (11, 14, "subscriptions[0].handler"),
        (15, 5, "tasks[0].extra"),
    ]
    assert issues[0].message.startswith("must be 1-200 letters, digits")
    assert issues[0].message.endswith("got 'has space'")
    assert issues[1].message.startswith("must be a size (")
    assert issues[2].message == (
        "must be an import path like 'package.module:function', got 'not-an-import-path'"
    )


def test_duplicate_topic_names_point_at_each_duplicate() -> None:
    issues = text_issues(
        """
        bus:
          topics:
            - name: a
            - name: b
            - name: a
            - name: a
        """
    )
    assert [i.format() for i in issues] == [
        "sampan.yaml:5:13 bus.topics[2].name: duplicate topic name (already declared at topics[0])",
        "sampan.yaml:6:13 bus.topics[3].name: duplicate topic name (already declared at topics[0])",
    ]


def test_duplicate_yaml_key_is_an_error() -> None:
    issue = only(text_issues("node:\n  name: a\n  name: b\n"))
    assert (issue.line, issue.column, issue.path) == (3, 3, "node.name")
    assert "duplicate key (first defined at line 2" in issue.message


def test_many_errors_reported_at_once_in_file_order(in_tmp: Path) -> None:
    write(
        in_tmp,
        "sampan.yaml",
        """
        node:
          admin:
            port: -1
          shutdown_grace: soon
        bus:
          durability: fast
          retry:
            max_attempts: 0
          topics: !include topics.yaml
          lease: ${LEASE}
        subscriptions:
          - topic: t
            group: g
            handler: m:f
            concurrency: 0
        """,
    )
    write(in_tmp, "topics.yaml", "- name: a\n- name: ''\n- {name: b, bogus: 1}\n")
    issues = issues_of("sampan.yaml")
    assert [(i.file, i.line, i.column) for i in issues] == [
        ("sampan.yaml", 3, 11),
        ("sampan.yaml", 4, 19),
        ("sampan.yaml", 6, 15),
        ("sampan.yaml", 8, 19),
        ("sampan.yaml", 10, 10),
        ("sampan.yaml", 15, 18),
        ("topics.yaml", 2, 9),
        ("topics.yaml", 3, 13),
    ]
    assert [i.path for i in issues] == [
        "node.admin.port",
        "node.shutdown_grace",
        "bus.durability",
        "bus.retry.max_attempts",
        "bus.lease",
        "subscriptions[0].concurrency",
        "bus.topics[1].name",
        "bus.topics[2].bogus",
    ]
    assert len(str(ConfigError(issues)).splitlines()) == 8


# ------------------------------------------------------------- interpolation


def test_interpolation_default_and_numeric_coercion() -> None:
    text = """
    node:
      name: ${NAME:-node-a}
      admin:
        port: ${PORT:-9090}
        enabled: ${ADMIN:-false}
        host: "${HOST:-10.0.0.1}"
    bus:
      lease: ${LEASE:-2m}
      url: nats://${NATS_HOST}:${NATS_PORT:-4222}
    """
    config = parse_config_text(textwrap.dedent(text), env={"NATS_HOST": "nats.internal"})
    assert config.node.name == "node-a"
    assert config.node.admin.port == 9090
    assert config.node.admin.enabled is False
    assert config.node.admin.host == "10.0.0.1"
    assert config.bus.lease == 120.0
    assert config.bus.url == "nats://nats.internal:4222"
    overridden = parse_config_text(
        textwrap.dedent(text), env={"NATS_HOST": "n", "PORT": "8000", "NAME": "b", "LEASE": ""}
    )
    assert (overridden.node.admin.port, overridden.node.name) == (8000, "b")
    assert overridden.bus.lease == 120.0  # empty counts as unset, like the shell's :-


def test_interpolated_value_is_typed_like_a_literal() -> None:
    data = "node:\n  admin:\n    port: ${PORT}\n"
    assert parse_config_text(data, env={"PORT": "8123"}).node.admin.port == 8123
    issue = only(text_issues(data, env={"PORT": "eighty"}))
    assert issue.format() == "sampan.yaml:3:11 node.admin.port: must be an integer, got 'eighty'"
    quoted = parse_config_text('node: {name: "${N}"}', env={"N": "123"})
    assert quoted.node.name == "123"


def test_interpolation_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMPAN_TEST_NODE_NAME", "from-env")
    assert parse_config_text("node: {name: '${SAMPAN_TEST_NODE_NAME}'}").node.name == "from-env"


def test_missing_variable_is_a_located_error() -> None:
    issues = text_issues(
        """
        node:
          name: ${NODE_NAME}
        bus:
          url: "redis://${REDIS_HOST}:${REDIS_PORT}"
        """
    )
    assert [(i.line, i.column, i.path) for i in issues] == [
        (2, 9, "node.name"),
        (4, 8, "bus.url"),
        (4, 8, "bus.url"),
    ]
    assert issues[0].message == (
        "environment variable NODE_NAME is not set"
        " (set it, or give a default: ${NODE_NAME:-default})"
    )
    assert "REDIS_HOST" in issues[1].message and "REDIS_PORT" in issues[2].message


def test_escape_gives_literal_dollar_brace() -> None:
    config = parse_config_text("node: {name: 'a$${HOME}b'}", env={"HOME": "/root"})
    assert config.node.name == "a${HOME}b"
    block = "tasks:\n  - run: m:f\n    options:\n      x: $${Y}\n      y: $$z\n      z: a$b\n"
    plain = parse_config_text(block, env={})
    assert plain.tasks[0].options == {"x": "${Y}", "y": "$$z", "z": "a$b"}


def test_malformed_references_are_errors() -> None:
    issues = text_issues("node: {name: '${1BAD}', data_dir: '${OPEN'}")
    assert [(i.path, i.column) for i in issues] == [("node.name", 14), ("node.data_dir", 35)]
    assert issues[0].message.startswith("invalid reference '${1BAD}'")
    assert issues[1].message.startswith("unterminated '${'")


def test_interpolate_function() -> None:
    assert interpolate("${A}-${B:-b}-$${C}-$", {"A": "a"}) == "a-b-${C}-$"


def test_keys_are_not_interpolated() -> None:
    config = parse_config_text("tasks: [{run: 'm:f', options: {'${K}': 1}}]", env={"K": "k"})
    assert config.tasks[0].options == {"${K}": 1}


# ------------------------------------------------------------------- includes


def test_include_replaces_value_relative_to_including_file(in_tmp: Path) -> None:
    write(
        in_tmp,
        "conf/sampan.yaml",
        """
        node: !include parts/node.yaml
        bus:
          topics: !include parts/topics.yaml
        """,
    )
    write(in_tmp, "conf/parts/node.yaml", "name: ${N:-inc}\nadmin: !include admin.yaml\n")
    write(in_tmp, "conf/parts/admin.yaml", "port: 7000\n")
    write(in_tmp, "conf/parts/topics.yaml", "- name: a\n- name: b\n")
    config = load_config("conf/sampan.yaml", env={})
    assert config.node.name == "inc"
    assert config.node.admin.port == 7000
    assert [t.name for t in config.bus.topics] == ["a", "b"]
    assert config.node.data_dir == in_tmp / "conf" / "data"


def test_include_in_list_item_and_empty_include(in_tmp: Path) -> None:
    write(
        in_tmp,
        "sampan.yaml",
        "bus:\n  topics:\n    - !include t.yaml\n  retention: !include e.yaml\n",
    )
    write(in_tmp, "t.yaml", "name: from-file\n")
    write(in_tmp, "e.yaml", "")
    issue = only(issues_of("sampan.yaml"))  # an empty file is null; retention must be a mapping
    assert issue.format() == "e.yaml:1:1 bus.retention: must be a mapping, got null"
    write(in_tmp, "e.yaml", "{}")
    assert load_config("sampan.yaml", env={}).bus.topics[0].name == "from-file"


def test_errors_inside_included_file_name_that_file(in_tmp: Path) -> None:
    write(in_tmp, "sampan.yaml", "bus:\n  retry: !include sub/retry.yaml\n")
    write(
        in_tmp,
        "sub/retry.yaml",
        """
        # retry policy shared by all nodes
        max_attempts: 0
        jitter: 2
        backoff: 1s
        """,
    )
    issues = issues_of("sampan.yaml")
    assert [i.format() for i in issues] == [
        "sub/retry.yaml:2:15 bus.retry.max_attempts: must be >= 1, got 0",
        "sub/retry.yaml:3:9 bus.retry.jitter: must be <= 1, got 2",
        "sub/retry.yaml:4:1 bus.retry.backoff: unknown key (expected one of: max_attempts,"
        " initial_backoff, max_backoff, multiplier, jitter)",
    ]


def test_missing_key_in_included_item_points_into_included_file(in_tmp: Path) -> None:
    write(in_tmp, "sampan.yaml", "subscriptions: !include subs.yaml\n")
    write(in_tmp, "subs.yaml", "- topic: a\n  group: g\n  handler: m:f\n- topic: b\n  group: g\n")
    issue = only(issues_of("sampan.yaml"))
    assert issue.format() == "subs.yaml:4:3 subscriptions[1].handler: required key is missing"


def test_missing_include_is_located(in_tmp: Path) -> None:
    write(in_tmp, "sampan.yaml", "node:\n  admin: !include nope.yaml\n")
    issue = only(issues_of("sampan.yaml"))
    assert issue.format() == "sampan.yaml:2:10 node.admin: cannot include nope.yaml: file not found"


def test_include_cycle_is_located(in_tmp: Path) -> None:
    write(in_tmp, "sampan.yaml", "bus: !include bus.yaml\n")
    write(in_tmp, "bus.yaml", "retry: !include retry.yaml\n")
    write(in_tmp, "retry.yaml", "max_attempts: !include bus.yaml\n")
    issue = only(issues_of("sampan.yaml"))
    assert issue.format() == (
        "retry.yaml:1:15 bus.retry.max_attempts:"
        " include cycle: sampan.yaml -> bus.yaml -> retry.yaml -> bus.yaml"
    )
    write(in_tmp, "self.yaml", "node: !include self.yaml\n")
    assert only(issues_of("self.yaml")).message == "include cycle: self.yaml -> self.yaml"


def test_include_needs_a_scalar_path() -> None:
    issue = only(text_issues("node: !include [a.yaml]\n"))
    assert (issue.line, issue.column, issue.path) == (1, 7, "node")
    assert issue.message.startswith("!include takes a file path")


def test_include_path_can_use_variables(in_tmp: Path) -> None:
    write(in_tmp, "sampan.yaml", "node: !include node-${ENV:-dev}.yaml\n")
    write(in_tmp, "node-dev.yaml", "name: dev\n")
    write(in_tmp, "node-prod.yaml", "name: prod\n")
    assert load_config("sampan.yaml", env={}).node.name == "dev"
    assert load_config("sampan.yaml", env={"ENV": "prod"}).node.name == "prod"


def test_yaml_error_inside_include_names_included_file(in_tmp: Path) -> None:
    write(in_tmp, "sampan.yaml", "bus:\n  fetch_batch: 0\n  retry: !include r.yaml\n")
    write(in_tmp, "r.yaml", "max_attempts: 3\n  jitter: 0.1\n")
    issues = issues_of("sampan.yaml")
    assert [i.format() for i in issues] == [
        "sampan.yaml:2:16 bus.fetch_batch: must be >= 1, got 0",
        "r.yaml:2:9: invalid YAML: mapping values are not allowed here",
    ]


# ------------------------------------------------------------------- YAML & files


def test_yaml_syntax_error_uses_mark() -> None:
    issue = only(text_issues("bus:\n  lease: 1\n   fetch_batch: 2\n"))
    assert issue.format() == "sampan.yaml:3:15: invalid YAML: mapping values are not allowed here"


def test_yaml_error_with_context() -> None:
    issue = only(text_issues("bus: {lease: 1\nnode: {}\n"))
    assert (issue.file, issue.line, issue.column, issue.path) == ("sampan.yaml", 2, 5, "")
    assert issue.message.startswith("invalid YAML: expected ',' or '}', but got ':'")
    assert "(while parsing a flow mapping at line 1, column 6)" in issue.message


def test_unknown_tag_and_bad_characters() -> None:
    issue = only(text_issues("node: {name: !secret x}\n"))
    assert (issue.line, issue.column, issue.path) == (1, 14, "node.name")
    assert issue.message.startswith("unknown tag '!secret'")
    control = only(text_issues("node:\n  name: a\x07b\n"))
    assert (control.line, control.column) == (2, 10)
    assert "#x0007" in control.message


def test_recursive_alias_is_an_error() -> None:
    issue = only(text_issues("tasks: &t [{run: 'm:f', options: {again: *t}}]\n"))
    assert issue.path == "tasks[0].options.again"
    assert issue.message.startswith("recursive alias")


def test_missing_and_unreadable_files(in_tmp: Path) -> None:
    assert only(issues_of("nope.yaml")).format() == "nope.yaml: file not found"
    (in_tmp / "dir.yaml").mkdir()
    assert only(issues_of("dir.yaml")).message == "is a directory, not a file"
    (in_tmp / "latin1.yaml").write_bytes(b"node:\n  name: caf\xe9\n")
    issue = only(issues_of("latin1.yaml"))
    assert issue.format() == "latin1.yaml:2:12: not valid UTF-8 text"


def test_utf8_bom_and_vietnamese_text(in_tmp: Path) -> None:
    (in_tmp / "sampan.yaml").write_bytes("\ufeffnode: {name: máy-chủ-1}\n".encode())
    assert load_config("sampan.yaml", env={}).node.name == "máy-chủ-1"


# ---------------------------------------------------------- durations & sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        (" 2 m ", 120.0),
        ("0.25", 0.25),
        (10, 10.0),
        (0.05, 0.05),
    ],
)
def test_durations_valid(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds
    config = parse_config_text(f"node: {{shutdown_grace: {text!r}}}", env={})
    assert config.node.shutdown_grace == seconds


@pytest.mark.parametrize(
    "text", ["soon", "5 minutes", "1y", "ms", "1e3s", "-5s", '""', ".inf", "true"]
)
def test_durations_invalid(text: str) -> None:
    issue = only(text_issues(f"node:\n  shutdown_grace: {text}\n"))
    assert (issue.line, issue.column, issue.path) == (2, 19, "node.shutdown_grace")
    assert issue.message.startswith("must be a duration (seconds or a string like '500ms'")


def test_negative_duration_number_is_a_bound_error() -> None:
    issue = only(text_issues("node: {shutdown_grace: -1}"))
    assert issue.message == "must be >= 0, got -1"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512KiB", 512 * 1024),
        ("10MiB", 10 * 2**20),
        ("1GiB", 2**30),
        ("1GB", 10**9),
        ("1kB", 1000),
        ("1KB", 1000),
        ("2TiB", 2 * 2**40),
        ("1.5KiB", 1536),
        ("100B", 100),
        ("64Mi", 64 * 2**20),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_sizes_valid(text: str | int, size: int) -> None:
    assert parse_byte_size(text) == size
    config = parse_config_text(f"bus: {{retention: {{max_bytes: {text!r}}}}}", env={})
    assert config.bus.retention.max_bytes == size


@pytest.mark.parametrize("text", ["lots", "10XB", "1.3B", "-1KiB", "KiB", "1.5", "true", "[1]"])
def test_sizes_invalid(text: str) -> None:
    issue = only(text_issues(f"bus:\n  retention:\n    max_bytes: {text}\n"))
    assert (issue.line, issue.column, issue.path) == (3, 16, "bus.retention.max_bytes")
    assert issue.message.startswith("must be a size (bytes or a string like '512KiB'")


# ------------------------------------------------------------- schema & docs


def test_json_schema_documents_the_whole_config() -> None:
    schema = config_json_schema()
    assert schema["$id"] == SCHEMA_ID
    assert schema["title"] == "sampan configuration"
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == {
        "node",
        "bus",
        "subscriptions",
        "tasks",
        "gateway",
        "consumers",
        "routes",
        "services",
        "mesh",
        "store",
        "flows",
    }
    assert schema["additionalProperties"] is False
    assert schema["properties"] == SampanConfig.model_json_schema()["properties"]
    lease = schema["$defs"]["BusConfig"]["properties"]["lease"]
    assert {"type": "number", "minimum": 0} in lease["anyOf"]
    for name, definition in schema["$defs"].items():
        assert definition.get("additionalProperties") is False, name
        for key, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}.{key} has no description"


def _doc_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", REPO / "scripts" / "gen_config_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_doc_matches_the_models() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == _doc_script().render(), "run: python scripts/gen_config_docs.py"


def test_doc_example_is_a_valid_config() -> None:
    config = parse_config_text(_doc_script().EXAMPLE, env={})
    assert config.node.admin.port == 9090
    assert [s.group for s in config.subscriptions] == ["billing", "ledger"]


def test_included_files_never_borrow_each_others_entries(in_tmp: Path) -> None:
    """Nodes of an included file are freed after it is built; a new file's nodes may then
    reuse their ids. Loading many times makes such an alias show up (it did, ~2 % of loads)."""
    write(
        in_tmp,
        "conf/sampan.yaml",
        "node: !include parts/node.yaml\nbus:\n  topics: !include parts/topics.yaml\n",
    )
    write(in_tmp, "conf/parts/node.yaml", "name: n\nadmin: !include admin.yaml\n")
    write(in_tmp, "conf/parts/admin.yaml", "port: 7000\n")
    write(in_tmp, "conf/parts/topics.yaml", "- name: a\n- name: b\n")
    for _ in range(300):
        config = load_config("conf/sampan.yaml", env={})
        assert [t.name for t in config.bus.topics] == ["a", "b"]
        assert config.node.admin.port == 7000
