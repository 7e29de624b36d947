"""The embedded bus's on-disk layout.

One table per topic (``m<id>``) keeps offsets dense and makes retention and topic deletion
cheap. A group's ``next_offset`` is its watermark: everything below it is acked or has a row in
``inflight``, which holds only what is exceptional — a retry backing off, a delayed message, a
released or expired lease (and, in files from version 2, every leased message). Ordinary leases
live in the memory of the process that owns the group (``owner`` until ``owner_until``; see
``sqlite_window.py``); ``epoch`` changes whenever the group is taken over or moved by a replay,
so a former owner's late writes are ignored.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3

# A row whose visible_at is at or beyond this waits for an earlier message with its key.
WAITING_FOR_KEY = 1.0e18

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    next_offset INTEGER NOT NULL DEFAULT 0,
    messages INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    max_age REAL,
    max_bytes INTEGER,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    topic_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    next_offset INTEGER NOT NULL,
    created_at REAL NOT NULL,
    owner TEXT,
    owner_until REAL NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    UNIQUE (topic_id, name)
);
CREATE TABLE IF NOT EXISTS inflight (
    group_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key TEXT,
    visible_at REAL NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    consumer TEXT,
    last_error TEXT,
    lease INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('lease', 0);
CREATE TABLE IF NOT EXISTS dedupe (
    topic_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    offset INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (topic_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inflight_by_visibility ON inflight (group_id, visible_at);
CREATE INDEX IF NOT EXISTS inflight_by_key ON inflight (group_id, key, offset)
    WHERE key IS NOT NULL;
"""


def message_table(topic_id: int) -> str:
    return f"m{int(topic_id)}"


def create_message_table(conn: sqlite3.Connection, topic_id: int) -> None:
    table = message_table(topic_id)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " offset INTEGER PRIMARY KEY,"
        " key TEXT,"
        " value BLOB NOT NULL,"
        " headers BLOB,"
        " published_at REAL NOT NULL,"
        " deliver_at REAL,"
        " target_group INTEGER,"
        " size INTEGER NOT NULL)"
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_time ON {table} (published_at)")


def open_connection(path: str, *, durability: str) -> sqlite3.Connection:
    """Open a connection in WAL mode; ``full`` durability fsyncs every commit."""
    # Room for the multi-row INSERTs' statement sizes of many topics (``sqlite_insert.py``).
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=30.0, cached_statements=1024
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=" + ("FULL" if durability == "full" else "NORMAL"))
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    columns = {c[1] for c in conn.execute("PRAGMA table_info(inflight)")}
    if "lease" not in columns:  # version 1 files: leases were told apart by attempt only
        conn.execute("ALTER TABLE inflight ADD COLUMN lease INTEGER NOT NULL DEFAULT 0")
    group_columns = {c[1] for c in conn.execute("PRAGMA table_info(groups)")}
    if "owner" not in group_columns:  # version 2 files: every lease had its inflight row
        conn.execute("ALTER TABLE groups ADD COLUMN owner TEXT")
        conn.execute("ALTER TABLE groups ADD COLUMN owner_until REAL NOT NULL DEFAULT 0")
        conn.execute("ALTER TABLE groups ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
    elif int(row[0]) < SCHEMA_VERSION:
        conn.execute(
            "UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),)
        )
    elif int(row[0]) > SCHEMA_VERSION:
        conn.execute("ROLLBACK")
        conn.close()
        raise RuntimeError(
            f"{path}: bus schema version {row[0]} is newer than this sampan ({SCHEMA_VERSION})"
        )
    conn.execute("COMMIT")
    return conn
