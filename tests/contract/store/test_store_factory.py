"""Choosing a backend from a URL, and the config model that validates the URL."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from sampan.store.base import StoreError
from sampan.store.config import StoreConfig
from sampan.store.factory import STORE_SCHEMES, open_store, redact_url
from sampan.store.postgres import PostgresStore
from sampan.store.redis import RedisStore
from sampan.store.sqlite import SqliteStore


async def test_no_url_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "node1"
    store = open_store(None, data_dir)
    assert isinstance(store, SqliteStore)
    assert Path(store.path) == data_dir / "state.db"
    assert store.url == "sqlite:///" + (data_dir / "state.db").as_posix()
    await store.start()
    await store.put("ns", "k", b"v")
    await store.close()
    assert (data_dir / "state.db").is_file()


async def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///var/state.db", Path("/unused"))
    assert isinstance(store, SqliteStore)
    assert store.path == "var/state.db"
    await store.start()
    await store.close()
    assert (tmp_path / "var" / "state.db").is_file()


def test_sqlite_absolute_path(tmp_path: Path) -> None:
    store = open_store("sqlite:///" + str(tmp_path / "s.db"), Path("/unused"))
    assert isinstance(store, SqliteStore)
    assert store.path == str(tmp_path / "s.db")
    assert str(tmp_path).startswith("/")  # so the URL above had four slashes


def test_sqlite_without_a_path_is_refused() -> None:
    with pytest.raises(StoreError, match="has no path"):
        open_store("sqlite:///", Path("."))
    with pytest.raises(StoreError, match=r"sqlite:///relative/path"):
        open_store("sqlite://host/x.db", Path("."))


async def test_memory_is_private_and_not_kept(tmp_path: Path) -> None:
    one, two = open_store("memory://", tmp_path), open_store("memory://", tmp_path)
    assert isinstance(one, SqliteStore)
    assert one.url == "memory://"
    await one.start()
    await two.start()
    await one.put("ns", "k", b"v")
    assert await two.get("ns", "k") is None
    await one.close()
    await two.close()
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380"])
def test_redis_urls(url: str) -> None:
    store = open_store(url, Path("."))
    assert isinstance(store, RedisStore)
    assert store.url == url


@pytest.mark.parametrize("url", ["postgresql://u@db/sampan", "postgres://u:p@db:5433/x"])
def test_postgres_urls(url: str) -> None:
    store = open_store(url, Path("."))
    assert isinstance(store, PostgresStore)
    assert store.url == url


def test_unknown_scheme_names_it_and_the_supported_ones() -> None:
    with pytest.raises(StoreError) as info:
        open_store("mysql://db/x", Path("."))
    message = str(info.value)
    assert "'mysql'" in message
    assert "sqlite, memory, redis, rediss, postgresql, postgres" in message


def test_a_bare_path_is_not_a_url() -> None:
    with pytest.raises(StoreError, match="scheme missing is not supported"):
        open_store("state.db", Path("."))


async def test_unreachable_server_is_a_store_error() -> None:
    for url in ("redis://127.0.0.1:1/0", "postgresql://postgres@127.0.0.1:1/test"):
        store = open_store(url, Path("."))
        with pytest.raises(StoreError, match="cannot connect"):
            await store.start()


def test_config_defaults() -> None:
    config = StoreConfig()
    assert config.url is None
    assert config.purge_interval == 60.0


def test_config_accepts_every_scheme_and_durations() -> None:
    for scheme in STORE_SCHEMES:
        assert StoreConfig(url=f"{scheme}://x").url == f"{scheme}://x"
    assert StoreConfig.model_validate({"purge_interval": "5m"}).purge_interval == 300.0


def test_config_bad_scheme_message() -> None:
    with pytest.raises(ValidationError) as info:
        StoreConfig(url="mongodb://db/x")
    (error,) = info.value.errors()
    assert error["type"] == "store_url_scheme"
    assert error["loc"] == ("url",)
    assert "unsupported scheme 'mongodb'" in error["msg"]
    assert "sqlite, memory, redis, rediss, postgresql, postgres" in error["msg"]


def test_config_url_without_scheme_message() -> None:
    with pytest.raises(ValidationError) as info:
        StoreConfig(url="/var/lib/state.db")
    (error,) = info.value.errors()
    assert error["type"] == "store_url"
    assert "'/var/lib/state.db'" in error["msg"]


def test_config_refuses_unknown_keys_and_bad_intervals() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        StoreConfig.model_validate({"uri": "redis://x"})
    with pytest.raises(ValidationError):
        StoreConfig(purge_interval=0)


def test_config_documents_every_field() -> None:
    for name, field in StoreConfig.model_fields.items():
        assert field.description, name


def test_errors_never_show_a_password() -> None:
    assert redact_url("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_url("redis://:s3cret@cache/0") == "redis://:***@cache/0"
    assert redact_url("redis://cache/0") == "redis://cache/0"
    with pytest.raises(StoreError) as info:
        open_store("mysql://u:s3cret@db/x", Path("."))
    assert "s3cret" not in str(info.value)


async def test_connect_errors_never_show_a_password() -> None:
    for url in ("redis://:s3cret@127.0.0.1:1/0", "postgresql://postgres:s3cret@127.0.0.1:1/x"):
        with pytest.raises(StoreError) as info:
            await open_store(url, Path(".")).start()
        assert "s3cret" not in str(info.value)
        assert "***" in str(info.value)
