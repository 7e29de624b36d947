"""Choose a state store backend from its URL."""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from sampan.store.base import StateStore, StoreError
from sampan.store.sqlite import MEMORY, SqliteStore

STORE_SCHEMES: Final = ("sqlite", "memory", "redis", "rediss", "postgresql", "postgres")
DEFAULT_FILE: Final = "state.db"


def redact_url(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db``, as the bus's URLs (SQLAlchemy's
    form: three slashes, then the path)."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise StoreError(
            f"store URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path"
        )
    path = url[len(prefix) :].split("?", 1)[0]
    if not path:
        raise StoreError(f"store URL {url!r} has no path (expected sqlite:///path/to/state.db)")
    return path


def open_store(url: str | None, data_dir: Path) -> StateStore:
    """The store at ``url``, or SQLite at ``data_dir/state.db`` when there is none.

    Redis and PostgreSQL clients are imported only when used. The store still needs
    ``await store.start()``."""
    if url is None:
        path = data_dir / DEFAULT_FILE
        return SqliteStore(path, "sqlite:///" + path.as_posix())
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        return SqliteStore(sqlite_path(url), url)
    if scheme == "memory":
        # Same engine in memory: for `sampan flow test` and unit tests, gone on close.
        return SqliteStore(MEMORY, url)
    if scheme in ("redis", "rediss"):
        from sampan.store.redis import RedisStore

        return RedisStore(url)
    if scheme in ("postgresql", "postgres"):
        from sampan.store.postgres import PostgresStore

        return PostgresStore(url)
    shown = repr(scheme) if scheme else "missing"
    raise StoreError(
        f"store URL {redact_url(url)!r}: scheme {shown} is not supported"
        f" (expected one of: {', '.join(STORE_SCHEMES)})"
    )
