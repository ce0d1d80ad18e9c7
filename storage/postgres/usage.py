"""Usage in PostgreSQL: request logs and their rollups, and the recovery of an instance that
is gone. Runs on the asyncio loop, one pooled connection per call.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from omixa.storage._common import REQUEST_LOG_COLUMNS, interrupted_log, latency_bin, log_from_hold
from omixa.storage.postgres.pool import ConnectionPool
from omixa.storage.postgres.sql import SQL
from omixa.storage.postgres.wallet import wallet_ops
from omixa.storage.records import FinalizeHold, RequestLog


async def insert_request_logs(
    conn: asyncpg.Connection, logs: Sequence[RequestLog], hold_ids: Sequence[str] = ()
) -> None:
    """Insert the logs and add the ones that were new to the rollups, and make the holds
    ``hold_ids`` forget their copies of the logs: one statement (column arrays, each log's
    latency bin computed here), atomic on its own or in the caller's transaction.

    One statement rather than an insert and two upserts in a transaction: a flush of the
    request logs (about 66 of them every 0.2 s at one connection) cost 1.6 ms of the loop's
    CPU that way, five trio-asyncio crossings and the rollup sums in Python, and the
    request in flight waited it out: that was the one-connection p99 on PostgreSQL."""
    columns: list[list[Any]] = [[getattr(log, name) for log in logs] for name in REQUEST_LOG_COLUMNS]
    columns.append([latency_bin(log.latency_ms) for log in logs])
    columns.append(list(hold_ids))
    await conn.execute(SQL.INSERT_REQUEST_LOGS, *columns)


async def insert_request_logs_pooled(pool: ConnectionPool, logs: Sequence[RequestLog], hold_ids: list[str]) -> None:
    async with pool.acquire() as conn:
        await insert_request_logs(conn, logs, hold_ids)


async def usage_rollups(pool: ConnectionPool, args: tuple) -> tuple[list, list]:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await conn.fetch(SQL.ROLLUPS, *args), await conn.fetch(SQL.ROLLUP_LATENCY, *args)


async def recover_instance(
    pool: ConnectionPool, instance_id: str, now: dt.datetime, stale_after: float | None
) -> list[RequestLog]:
    # The same steps as SQLite's recovery (storage.sqlite.usage), in this driver's calls and
    # under row locks: the pending holds voided as one batch, not one by one.
    async with pool.acquire() as conn, conn.transaction():
        if stale_after is not None:
            # Locks the row: a heartbeat waits for this transaction, or came first and wins.
            age = await conn.fetchval(SQL.LOCK_INSTANCE_AGE, instance_id)
            if age is not None and age <= stale_after:
                return []
        holds = await conn.fetch(SQL.INSTANCE_HOLDS, instance_id)
        # Voided as a release voids: only if still pending, exactly once.
        voided = await wallet_ops(conn, [FinalizeHold(hold_id=h["id"], void=True) for h in holds]) if holds else []
        logs = [interrupted_log(hold, now) for hold, row in zip(holds, voided, strict=True) if not row["o_final"]]
        # Requests it settled whose logs it had not written yet: their holds kept them. Only
        # the copies read here are cleared (one settled meanwhile by a process wrongly taken
        # for dead keeps its own).
        unlogged = await conn.fetch(SQL.INSTANCE_UNLOGGED, instance_id)
        logs += [log_from_hold(hold) for hold in unlogged]
        if logs:
            existing = {r[0] for r in await conn.fetch(SQL.EXISTING_LOGS, [log.id for log in logs])}
            logs = [log for log in logs if log.id not in existing]
            await insert_request_logs(conn, logs, [hold["id"] for hold in unlogged])
        await conn.execute(SQL.DELETE_INSTANCE, instance_id)
        return logs
