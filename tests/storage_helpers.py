"""Shared helpers of the storage tests: raw SQL on the test database, funded accounts, records."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

import asyncpg
import trio
import trio_asyncio

from omixa.storage import RequestLog, WalletState
from omixa.storage.open import sqlite_path

UTC = dt.UTC
USD = 1_000_000_000  # nano-dollars


def _later(minutes: float = 5) -> dt.datetime:
    return dt.datetime.now(UTC) + dt.timedelta(minutes=minutes)


async def raw(database_url: str, aio_loop, query: str) -> list[tuple]:
    """Run one SQL statement directly on the test database (no parameters)."""
    if database_url.startswith("sqlite:"):

        def run() -> list[tuple]:
            conn = sqlite3.connect(sqlite_path(database_url), isolation_level=None)
            try:
                return conn.execute(query).fetchall()
            finally:
                conn.close()

        return await trio.to_thread.run_sync(run)

    async def run_pg() -> list[tuple]:
        conn = await asyncpg.connect(database_url)
        try:
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return await trio_asyncio.aio_as_trio(run_pg, loop=aio_loop)()


async def funded_account(storage, amount: int):
    account = await storage.create_account("dev@example.com")
    if amount:
        await storage.top_up(account.id, amount)
    return account


async def hold_then_settle(storage, account, request_id: str) -> None:
    """A hold of 10 settled at 3: the writes one small request makes."""
    hold = await storage.create_hold(account_id=account.id, request_id=request_id, amount=10, expires_at=_later())
    await storage.settle_hold(hold.id, 3)


def wallet_of(account_id: str, balance: int, locked: int) -> WalletState:
    return WalletState(account_id=account_id, balance=balance, locked=locked)


def request_log(request_id: str, **overrides: Any) -> RequestLog:
    values: dict[str, Any] = dict(
        id=request_id,
        account_id="acct_x",
        key_id="key_x",
        model="gpt-4o-mini",
        provider="azure",
        deployment="eastus-mini",
        region="eastus",
        status="ok",
        stream=True,
        prompt_tokens=12,
        completion_tokens=34,
        reasoning_tokens=0,
        cached_tokens=5,
        cost=123_456,
        latency_ms=420,
        ttft_ms=95,
        created_at=dt.datetime(2025, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC),
        upstream_request_id="5f0c6a1e-8d2b-4c3a-9e7f-0a1b2c3d4e5f",
    )
    values.update(overrides)
    return RequestLog(**values)


# -- opening and migrations -------------------------------------------------------------------
