"""Config models and the small parsers of the MQTT and PostgreSQL connectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sampan.flows.connectors import SINK_KINDS, SOURCE_KINDS
from sampan.flows.connectors._support import quote_name
from sampan.flows.connectors.mqtt import (
    MqttSinkConfig,
    MqttSourceConfig,
    parse_broker_url,
)
from sampan.flows.connectors.postgres_outbox import OutboxConfig, outbox_ddl
from sampan.flows.connectors.postgres_table import TableConfig, array_literal, text_value
from sampan.flows.connectors.webhook import WebhookConfig


def test_kinds_are_documented_flat_models() -> None:
    assert isinstance(SOURCE_KINDS, tuple) and isinstance(SINK_KINDS, tuple)
    for kind in (*SOURCE_KINDS, *SINK_KINDS):
        model: type[BaseModel] = kind.config
        assert model.model_config.get("extra") == "forbid"
        assert kind.key in model.model_fields, f"{kind.key}: the key must be a field"
        assert kind.summary
        for name, info in model.model_fields.items():
            assert info.description, f"{kind.key}.{name} has no description"
        model.model_json_schema()  # documents without error


def test_broker_urls() -> None:
    plain = parse_broker_url("mqtt://127.0.0.1")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("127.0.0.1", 1883, False, None)
    secure = parse_broker_url("mqtts://u%40x:p%3Aw@broker.example:9999")
    assert (secure.host, secure.port, secure.tls) == ("broker.example", 9999, True)
    assert (secure.username, secure.password) == ("u@x", "p:w")
    assert parse_broker_url("mqtts://h").port == 8883
    for bad in ("http://h", "mqtt://", "mqtt://h/x", "mqtt://h:99999", "mqtt://h?a=1"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


@given(
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){0,2}", fullmatch=True),
    port=st.integers(1, 65535),
    user=st.text(max_size=10),
    password=st.text(max_size=10),
)
def test_broker_url_round_trip(host: str, port: int, user: str, password: str) -> None:
    from urllib.parse import quote

    url = f"mqtt://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"
    parsed = parse_broker_url(url)
    assert (parsed.host, parsed.port, parsed.username, parsed.password) == (
        host,
        port,
        user,
        password,
    )


@pytest.mark.parametrize("topic", ["a/#/b", "a#", "a/b+", "", "x\0"])
def test_bad_topic_filters(topic: str) -> None:
    with pytest.raises(ValidationError):
        MqttSourceConfig.model_validate({"mqtt": "mqtt://h", "topic": topic})


def test_mqtt_source_offers_no_qos2() -> None:
    assert MqttSourceConfig.model_validate({"mqtt": "mqtt://h", "topic": "s/#"}).qos == 1
    with pytest.raises(ValidationError):
        MqttSourceConfig.model_validate({"mqtt": "mqtt://h", "topic": "s/#", "qos": 2})
    assert MqttSinkConfig.model_validate({"mqtt": "mqtt://h", "topic": "a/{key}", "qos": 2})


@pytest.mark.parametrize("name", ["outbox", "app.outbox", "_o$1", "Outbox"])
def test_good_sql_names(name: str) -> None:
    assert OutboxConfig.model_validate({"outbox": name, "dsn": "postgresql://"}).outbox == name


@pytest.mark.parametrize(
    "name", ['o"; drop table x; --', "a.b.c", "1abc", "", "a b", "x" * 64, "a-b"]
)
def test_bad_sql_names(name: str) -> None:
    with pytest.raises(ValidationError, match="SQL identifier"):
        OutboxConfig.model_validate({"outbox": name, "dsn": "postgresql://"})


@given(st.text(max_size=80))
def test_sql_names_either_refused_or_quoted_safely(name: str) -> None:
    try:
        OutboxConfig.model_validate({"outbox": name, "dsn": "postgresql://"})
    except ValidationError:
        return
    quoted = quote_name(name)
    assert quoted.count('"') == 2 * len(name.split("."))
    assert all(c.isalnum() or c in '_$."' for c in quoted)


def test_outbox_ddl() -> None:
    plain = outbox_ddl("app.outbox")
    assert plain[0].startswith('CREATE TABLE IF NOT EXISTS "app"."outbox" (')
    assert 'ON "app"."outbox" (id) WHERE published_at IS NULL' in plain[1]
    notify = outbox_ddl("outbox", notify="outbox_new")
    assert "pg_notify('outbox_new', '')" in notify[2]
    assert "FOR EACH STATEMENT" in notify[3]


def test_table_config() -> None:
    config = TableConfig.model_validate(
        {"table": "t", "dsn": "postgresql://", "columns": {"id": "data.id", "doc": "@"}}
    )
    assert config.on_conflict == "error"
    for bad in (
        {"columns": {}},
        {"columns": {"a.b": "data"}},
        {"columns": {"a": "data[["}},
        {"columns": {"a": "data"}, "conflict_columns": ["a"]},
    ):
        with pytest.raises(ValidationError):
            TableConfig.model_validate({"table": "t", "dsn": "postgresql://", **bad})


def test_text_values() -> None:
    assert text_value(None, "text") is None
    assert text_value(True, "boolean") == "true"
    assert text_value(12, "integer") == "12"
    assert text_value(1.5, "numeric") == "1.5"
    assert text_value({"a": [1]}, "jsonb") == '{"a":[1]}'
    assert text_value([1, 2], "jsonb") == "[1,2]"
    assert text_value(["a", None, 'b"c\\'], "text[]") == '{"a",NULL,"b\\"c\\\\"}'
    assert text_value(b"\x01\xff", "bytea") == "\\x01ff"
    assert array_literal([[1, 2], [3, 4]]) == '{{"1","2"},{"3","4"}}'


def test_webhook_config() -> None:
    config = WebhookConfig.model_validate({"webhook": "https://h/x", "secret": "s" * 20})
    assert "s" * 20 not in repr(config)  # the secret stays out of logs
    for bad in (
        {"webhook": "ftp://h"},
        {"webhook": "https://h", "headers": {"x-sampan-signature": "forged"}},
        {"webhook": "https://h", "headers": {"x": "a\r\nb: c"}},
        {"webhook": "https://h", "method": "GET"},
    ):
        with pytest.raises(ValidationError):
            WebhookConfig.model_validate(bad)
