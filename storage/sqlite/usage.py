"""Usage in SQLite: request logs and their rollups, gateway instances, and the recovery of an
instance that is gone. Runs in the worker thread; a writer is called inside the write
transaction (BEGIN IMMEDIATE).

The rollups are summed in Python (:func:`storage._common.rollup_deltas`) and upserted row by
row; PostgreSQL sums them in the one statement that inserts the logs. Both count the same:
a change to one is a change to the other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from omixa.storage._common import (
    PENDING_HOLD_COLUMNS,
    REQUEST_LOG_COLUMNS,
    ROLLUP_KEY,
    ROLLUP_LATENCY_SELECT,
    ROLLUP_SELECT,
    ROLLUP_SUMS,
    UNLOGGED_HOLD_COLUMNS,
    bucket_start,
    interrupted_log,
    log_from_hold,
    merge_rollup_rows,
    rollup_deltas,
)
from omixa.storage.records import Instance, RequestLog, RollupRow
from omixa.storage.sqlite.rows import dicts, from_us, now_us, to_us
from omixa.storage.sqlite.wallet import finalize

LIST_INSTANCES = "SELECT id, host, pid, started_at, heartbeat_at FROM instances ORDER BY id"
_INSERT_REQUEST_LOG = (
    f"INSERT INTO request_logs ({', '.join(REQUEST_LOG_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(REQUEST_LOG_COLUMNS))}) ON CONFLICT (id) DO NOTHING"
)
_KEY = ", ".join(ROLLUP_KEY)
_UPSERT_ROLLUP = (
    f"INSERT INTO usage_rollups ({_KEY}, {', '.join(ROLLUP_SUMS)})"
    f" VALUES ({', '.join('?' * (len(ROLLUP_KEY) + len(ROLLUP_SUMS)))})"
    f" ON CONFLICT ({_KEY}) DO UPDATE SET " + ", ".join(f"{c} = usage_rollups.{c} + excluded.{c}" for c in ROLLUP_SUMS)
)
_UPSERT_LATENCY = (
    f"INSERT INTO usage_rollup_latency ({_KEY}, bin, count)"
    f" VALUES ({', '.join('?' * (len(ROLLUP_KEY) + 2))}) ON CONFLICT ({_KEY}, bin)"
    " DO UPDATE SET count = usage_rollup_latency.count + excluded.count"
)


def insert_request_logs_clearing(conn: sqlite3.Connection, logs: Sequence[RequestLog], hold_ids: Sequence[str]) -> None:
    """Insert the logs, and make the holds forget their copies of them (one transaction)."""
    _insert_request_logs(conn, logs)
    for chunk in _chunks(hold_ids, 500):
        conn.execute(
            f"UPDATE holds SET log = NULL WHERE id IN ({', '.join('?' * len(chunk))}) AND log IS NOT NULL",
            chunk,
        )


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    """``items`` in slices of at most ``size`` (SQLite bounds a statement's parameters)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _insert_request_logs(conn: sqlite3.Connection, logs: Sequence[RequestLog]) -> None:
    """Insert the logs; add the ones that were new to the rollups. In the caller's transaction."""
    new = []
    for log in logs:
        row = tuple(getattr(log, name) for name in REQUEST_LOG_COLUMNS[:-1])
        if conn.execute(_INSERT_REQUEST_LOG, row + (to_us(log.created_at, "created_at"),)).rowcount:
            new.append(log)
    for account_id, granularity, delta in rollup_deltas(new):
        key = (account_id, granularity, to_us(delta.bucket_start, "bucket_start"), delta.model, delta.key_id)
        conn.execute(_UPSERT_ROLLUP, (*key, *(getattr(delta, c) for c in ROLLUP_SUMS)))
        conn.executemany(_UPSERT_LATENCY, [(*key, bin_, count) for bin_, count in delta.latency_bins.items()])


def usage_rollups(
    conn: sqlite3.Connection,
    account_id: str,
    granularity: str,
    since_us: int,
    until_us: int,
    model: str | None,
    key_id: str | None,
) -> list[RollupRow]:
    bucket_start(from_us(since_us), granularity)  # validates the granularity
    where = "account_id = ? AND granularity = ? AND bucket_start >= ? AND bucket_start < ?"
    params: tuple = (account_id, granularity, since_us, until_us)
    if model is not None:
        where += " AND model = ?"
        params += (model,)
    if key_id is not None:
        where += " AND key_id = ?"
        params += (key_id,)
    rows = dicts(conn, f"{ROLLUP_SELECT} WHERE {where} ORDER BY bucket_start, model, key_id", params)
    bins = dicts(conn, f"{ROLLUP_LATENCY_SELECT} WHERE {where}", params)
    return merge_rollup_rows(rows, bins)


def upsert_instance(conn: sqlite3.Connection, instance: Instance) -> bool:
    """Refresh the heartbeat (now); insert the row if it is missing. True if it was there."""
    heartbeat_us = now_us()
    if conn.execute("UPDATE instances SET heartbeat_at = ? WHERE id = ?", (heartbeat_us, instance.id)).rowcount:
        return True
    conn.execute(
        "INSERT INTO instances (id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
        (instance.id, instance.host, instance.pid, to_us(instance.started_at, "started_at"), heartbeat_us),
    )
    return False


def recover_instance(
    conn: sqlite3.Connection, instance_id: str, at_us: int, stale_after: float | None
) -> list[RequestLog]:
    # The same steps as PostgreSQL's recovery, in this driver's calls (blocking, in the
    # worker thread, under the write lock rather than row locks).
    if stale_after is not None:
        row = conn.execute("SELECT heartbeat_at FROM instances WHERE id = ?", (instance_id,)).fetchone()
        if row is not None and (now_us() - row[0]) / 1e6 <= stale_after:
            return []  # it heartbeated meanwhile: alive
    holds = dicts(
        conn,
        f"SELECT {PENDING_HOLD_COLUMNS} FROM holds WHERE instance_id = ? AND state = 'pending' ORDER BY created_at, id",
        (instance_id,),
    )
    now = from_us(at_us)
    logs = []
    for hold in holds:
        if not finalize(conn, hold["id"], 0, "voided", at_us).already_final:
            logs.append(interrupted_log(hold, now))
    # Requests it settled whose logs it had not written yet: their holds kept them.
    unlogged = dicts(
        conn, f"SELECT {UNLOGGED_HOLD_COLUMNS} FROM holds WHERE instance_id = ? AND log IS NOT NULL", (instance_id,)
    )
    logs += [log_from_hold(hold) for hold in unlogged]
    existing: set[str] = set()
    for chunk in _chunks([log.id for log in logs], 500):
        existing.update(
            r[0]
            for r in conn.execute(f"SELECT id FROM request_logs WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        )
    logs = [log for log in logs if log.id not in existing]
    insert_request_logs_clearing(conn, logs, [hold["id"] for hold in unlogged])
    conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
    return logs
