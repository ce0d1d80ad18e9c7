"""The SQLite connection: opening it, migrating the file, checkpointing its write-ahead log,
closing it. Everything here runs in a worker thread.
"""

from __future__ import annotations

import sqlite3
import time

from omixa.storage._common import latency_bin
from omixa.storage.errors import MigrationError
from omixa.storage.migrations import load_migrations, pending_migrations
from omixa.storage.sqlite.rows import now_us

BUSY_TIMEOUT_MS = 5000
# maintain(): how often the write-ahead log is checkpointed; SQLite's own default threshold
# (in pages), restored when maintain() stops.
CHECKPOINT_SECONDS = 1.0
DEFAULT_AUTOCHECKPOINT_PAGES = 1000
# A log this long (in frames, i.e. pages) is rewound after the passive checkpoint.
RESTART_FRAMES = 1000


def connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves; the module's implicit
    # transactions would defeat BEGIN IMMEDIATE.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        # busy_timeout first: switching to WAL needs a lock another opener may hold.
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe in WAL
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL (a no-op once it is). SQLite does not wait on the busy timeout
    for this switch, so openers racing on a new file retry for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # in the worker thread


def migrate(conn: sqlite3.Connection) -> None:
    # Runs inside BEGIN IMMEDIATE: the write lock makes concurrent openers take turns.
    # A migration that rebuilds the latency histograms from request_logs (0010) bins each
    # log as the live path does, with this very function.
    conn.create_function("omixa_latency_bin", 1, latency_bin, deterministic=True)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at INTEGER NOT NULL) STRICT"
    )
    applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    for migration in pending_migrations(load_migrations("sqlite"), applied):
        for statement in _split_statements(migration.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, now_us()),
        )


def _split_statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction first; split on complete statements
    # instead (sqlite3.complete_statement understands strings, comments and triggers).
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    leftover = [ln for ln in current.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if leftover:
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {current!r}")
    return statements


def connect_checkpointer(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def checkpoint(conn: sqlite3.Connection) -> None:
    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames >= RESTART_FRAMES:
        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def set_autocheckpoint(conn: sqlite3.Connection, pages: int) -> None:
    conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}").fetchall()


def close(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA optimize")  # cheap; keeps the planner's statistics fresh
    finally:
        conn.close()
