"""The storage interface, run against both real backends (see conftest.py).

Raw SQL (to read the schema's bookkeeping or to tamper with a balance) goes straight to the
database with sqlite3 / asyncpg, never through the Storage interface.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sqlite3
from typing import Any

import asyncpg
import pytest
import trio
import trio_asyncio

from omixa.storage import (
    FinalizeHold,
    HoldContext,
    KeyRevoked,
    MigrationError,
    NewHold,
    NotFound,
    RequestLog,
    Settlement,
    StorageError,
    WalletState,
    open_storage,
)
from omixa.storage.migrations import load_migrations
from omixa.storage.open import sqlite_path
from omixa.storage.postgres.aio import AioBridge
from omixa.storage.postgres.connection import pool_options as _pool_options
from omixa.storage.sqlite import SQLiteStorage

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
    )
    values.update(overrides)
    return RequestLog(**values)


# -- opening and migrations -------------------------------------------------------------------


async def test_migrations_recorded_and_idempotent(storage, database_url, aio_loop):
    before = await raw(database_url, aio_loop, "SELECT version, applied_at FROM schema_migrations")
    assert [v for v, _ in before] == [m.version for m in load_migrations("sqlite")]
    async with open_storage(database_url, loop=aio_loop) as again:
        assert await again.get_account("acct_missing") is None
    after = await raw(database_url, aio_loop, "SELECT version, applied_at FROM schema_migrations")
    assert after == before


def test_dialects_have_the_same_migrations():
    sqlite = [(m.version, m.name) for m in load_migrations("sqlite")]
    postgres = [(m.version, m.name) for m in load_migrations("postgres")]
    assert sqlite == postgres
    assert sqlite[0] == (1, "initial")


async def test_concurrent_opens_migrate_once(database_url, aio_loop):
    async def open_and_use():
        async with open_storage(database_url, loop=aio_loop) as store:
            await store.create_account("x@example.com")

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(open_and_use)
    rows = await raw(database_url, aio_loop, "SELECT version FROM schema_migrations")
    assert sorted(r[0] for r in rows) == [m.version for m in load_migrations("sqlite")]


async def test_key_limits_are_stored(storage):
    account = await storage.create_account("k@example.com")
    key = await storage.create_api_key(account_id=account.id, key_hash="h" * 64, prefix="omx_live_ab", rpm=3, tpm=500)
    found = await storage.find_api_key("h" * 64)
    assert (found.rpm, found.tpm) == (3, 500) and found == key


async def test_newer_schema_is_refused(storage, database_url, aio_loop):
    await raw(
        database_url,
        aio_loop,
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, 'future', "
        + ("0)" if database_url.startswith("sqlite:") else "now())"),
    )
    with pytest.raises(MigrationError, match="9999"):
        async with open_storage(database_url, loop=aio_loop):
            pass  # pragma: no cover


@pytest.mark.parametrize("url", ["mysql://localhost/db", "sqlite:///", "sqlite://host/x.db", ""])
async def test_unsupported_urls(url):
    with pytest.raises(ValueError):
        async with open_storage(url):
            pass  # pragma: no cover


async def test_postgres_needs_a_loop():
    with pytest.raises(StorageError, match="trio-asyncio"):
        async with open_storage("postgresql://postgres@127.0.0.1:5432/test"):
            pass  # pragma: no cover


async def test_sqlite_memory_and_relative_paths(tmp_path, monkeypatch):
    async with open_storage("sqlite:///:memory:") as store:
        account = await store.create_account("m@example.com")
        assert (await store.get_account(account.id)).email == "m@example.com"
    monkeypatch.chdir(tmp_path)
    async with open_storage("sqlite:///rel.db") as store:
        await store.create_account("r@example.com")
    assert (tmp_path / "rel.db").exists()


async def test_sqlite_unopenable_file_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError):
        async with open_storage(f"sqlite:///{tmp_path}/missing-dir/x.db"):
            pass  # pragma: no cover


async def test_closed_storage_refuses_calls(database_url, aio_loop):
    async with open_storage(database_url, loop=aio_loop) as store:
        pass
    await store.aclose()  # closing twice is fine
    with pytest.raises(StorageError):
        await store.get_account("acct_x")


async def test_bridge_logs_asyncio_errors_instead_of_crashing(aio_loop, caplog):
    # trio-asyncio's default handler would re-raise this into the loop's nursery.
    bridge = AioBridge(aio_loop)
    aio_loop.call_exception_handler({"message": "Resetting connection with an active transaction"})

    async def answer():
        await asyncio.sleep(0)
        return 42

    assert await bridge.run(answer) == 42
    assert "Resetting connection" in caplog.text


def test_pool_size_comes_from_the_url():
    dsn, options = _pool_options("postgresql://u@h:5432/db?pool_max_size=3&sslmode=disable")
    assert dsn == "postgresql://u@h:5432/db?sslmode=disable"
    assert options == {"min_size": 1, "max_size": 3}


# -- accounts and keys ------------------------------------------------------------------------


async def test_accounts(storage):
    account = await storage.create_account("a@example.com")
    assert account.id.startswith("acct_") and len(account.id) == 5 + 24
    assert account.created_at.tzinfo is not None
    assert abs(account.created_at - dt.datetime.now(UTC)) < dt.timedelta(minutes=1)
    assert await storage.get_account(account.id) == account
    assert await storage.get_account("acct_missing") is None
    assert await storage.get_wallet(account.id) == wallet_of(account.id, 0, 0)
    assert await storage.get_wallet("acct_missing") is None


async def test_api_keys(storage):
    account = await storage.create_account("k@example.com")
    key = await storage.create_api_key(account_id=account.id, key_hash="h" * 64, prefix="omx-abc", rpm=60)
    assert key.id.startswith("key_") and key.revoked_at is None and key.rpm == 60
    assert await storage.find_api_key("h" * 64) == key
    assert await storage.find_api_key("nope") is None

    unlimited = await storage.create_api_key(account_id=account.id, key_hash="u" * 64, prefix="omx-u", rpm=None)
    assert (await storage.find_api_key("u" * 64)).rpm is None
    assert unlimited.id != key.id

    assert await storage.revoke_api_key(key.id) is True
    first = (await storage.find_api_key("h" * 64)).revoked_at
    assert first is not None and first.tzinfo is not None
    await trio.sleep(0.01)
    assert await storage.revoke_api_key(key.id) is True
    assert (await storage.find_api_key("h" * 64)).revoked_at == first
    assert await storage.revoke_api_key("key_missing") is False


async def test_api_key_errors(storage):
    with pytest.raises(NotFound):
        await storage.create_api_key(account_id="acct_missing", key_hash="x", prefix="p", rpm=None)
    account = await storage.create_account("k@example.com")
    await storage.create_api_key(account_id=account.id, key_hash="dup", prefix="p", rpm=None)
    with pytest.raises(StorageError):
        await storage.create_api_key(account_id=account.id, key_hash="dup", prefix="p", rpm=None)


async def test_dashboard_sessions_live_until_ended_or_expired(storage):
    account = await storage.create_account("s@example.com")
    key = await storage.create_api_key(account_id=account.id, key_hash="s" * 64, prefix="omx-s", rpm=None)
    now = dt.datetime.now(dt.UTC)
    await storage.create_dashboard_session("sess-a", key.id, now + dt.timedelta(hours=1))
    await storage.create_dashboard_session("sess-b", key.id, now + dt.timedelta(hours=1))
    await storage.create_dashboard_session("sess-old", key.id, now - dt.timedelta(seconds=1))
    assert await storage.dashboard_session_key("sess-a") == key
    assert await storage.dashboard_session_key("sess-old") is None  # expired
    await storage.end_dashboard_session("sess-a")
    await storage.end_dashboard_session("sess-a")  # twice: a no-op
    assert await storage.dashboard_session_key("sess-a") is None
    assert await storage.dashboard_session_key("sess-b") == key  # only the one signed out ends
    await storage.revoke_api_key(key.id)
    assert (await storage.dashboard_session_key("sess-b")).revoked_at is not None  # the caller checks
    with pytest.raises(NotFound):
        await storage.create_dashboard_session("sess-c", "key_missing", now + dt.timedelta(hours=1))


# -- wallet -----------------------------------------------------------------------------------


async def test_top_up(storage):
    account = await storage.create_account("w@example.com")
    wallet = await storage.top_up(account.id, 5 * USD, note="card")
    assert (wallet.balance, wallet.locked, wallet.available) == (5 * USD, 0, 5 * USD)
    wallet = await storage.top_up(account.id, 1)
    assert wallet.balance == 5 * USD + 1
    assert await storage.get_wallet(account.id) == wallet
    entries = await storage.ledger_entries(account.id)
    assert [(e.type, e.amount, e.balance_after, e.locked_after) for e in entries] == [
        ("top_up", 5 * USD, 5 * USD, 0),
        ("top_up", 1, 5 * USD + 1, 0),
    ]
    assert entries[0].id < entries[1].id
    assert entries[0].created_at.tzinfo is not None


@pytest.mark.parametrize("amount", [0, -1, 2**63])
async def test_top_up_refuses_bad_amounts(storage, amount):
    account = await storage.create_account("w@example.com")
    with pytest.raises(ValueError):
        await storage.top_up(account.id, amount)
    assert await storage.ledger_entries(account.id) == []


async def test_top_up_unknown_account(storage):
    with pytest.raises(NotFound):
        await storage.top_up("acct_missing", 1)


async def test_hold_success(storage):
    account = await funded_account(storage, 100)
    # Any timezone in; timezone-aware UTC out.
    expires = _later().astimezone(dt.timezone(dt.timedelta(hours=2)))
    hold = await storage.create_hold(account_id=account.id, request_id="req_1", amount=60, expires_at=expires)
    assert hold.id.startswith("hold_") and hold.amount == 60 and hold.request_id == "req_1"
    assert hold.expires_at == expires and hold.expires_at.utcoffset() == dt.timedelta(0)
    assert hold.created_at.utcoffset() == dt.timedelta(0)
    wallet = await storage.get_wallet(account.id)
    assert (wallet.balance, wallet.locked, wallet.available) == (100, 60, 40)
    last = (await storage.ledger_entries(account.id))[-1]
    assert (last.type, last.amount, last.balance_after, last.locked_after) == ("hold", 60, 100, 60)
    assert (last.hold_id, last.request_id) == (hold.id, "req_1")


async def test_hold_refused_writes_nothing(storage, database_url, aio_loop):
    account = await funded_account(storage, 100)
    await storage.create_hold(account_id=account.id, request_id="r1", amount=70, expires_at=_later())
    before = await storage.ledger_entries(account.id)
    refused = await storage.create_hold(account_id=account.id, request_id="r2", amount=31, expires_at=_later())
    assert refused is None
    assert await storage.ledger_entries(account.id) == before
    assert await raw(database_url, aio_loop, "SELECT request_id FROM holds") == [("r1",)]
    assert (await storage.get_wallet(account.id)).locked == 70
    # Exactly the available amount still fits.
    assert await storage.create_hold(account_id=account.id, request_id="r3", amount=30, expires_at=_later())


async def test_hold_errors(storage):
    account = await funded_account(storage, 100)
    with pytest.raises(NotFound):
        await storage.create_hold(account_id="acct_missing", request_id="r", amount=1, expires_at=_later())
    for amount in (0, -5):
        with pytest.raises(ValueError):
            await storage.create_hold(account_id=account.id, request_id="r", amount=amount, expires_at=_later())
    with pytest.raises(ValueError):
        await storage.create_hold(account_id=account.id, request_id="r", amount=1, expires_at=dt.datetime.now())
    assert len(await storage.ledger_entries(account.id)) == 1


async def test_group_commit_applies_steps_in_order_and_all_or_nothing(storage, database_url, aio_loop):
    account = await funded_account(storage, 100)
    first = await storage.create_hold(account_id=account.id, request_id="r0", amount=40, expires_at=_later())

    def new(request_id: str, amount: int) -> NewHold:
        return NewHold(account_id=account.id, request_id=request_id, amount=amount, expires_at=_later())

    # In order: the settle frees 30 of the 40, so the second 45 fits and the 25 does not.
    held, settled, second, refused = await storage.apply_wallet_ops(
        [new("r1", 45), FinalizeHold(hold_id=first.id, charge=10), new("r2", 45), new("r3", 25)]
    )
    assert held.amount == 45 and held.request_id == "r1"
    assert isinstance(settled, Settlement) and (settled.charged, settled.released) == (10, 30)
    assert second.amount == 45 and refused is None
    wallet = await storage.get_wallet(account.id)
    assert (wallet.balance, wallet.locked) == (90, 90)
    before = await storage.ledger_entries(account.id)
    # A failing step rolls back the steps before it: nothing of this batch is left.
    with pytest.raises(NotFound):
        await storage.apply_wallet_ops(
            [FinalizeHold(hold_id=held.id, void=True), new("r4", 1), FinalizeHold(hold_id="hold_missing")]
        )
    assert await storage.ledger_entries(account.id) == before
    assert (await storage.get_wallet(account.id)).locked == 90
    rows = await raw(database_url, aio_loop, "SELECT request_id FROM holds ORDER BY request_id")
    assert rows == [("r0",), ("r1",), ("r2",)]
    voided, again = await storage.apply_wallet_ops(
        [FinalizeHold(hold_id=held.id, void=True), FinalizeHold(hold_id=held.id, charge=5)]
    )
    assert (voided.released, voided.already_final, again.already_final, again.charged) == (45, False, True, 0)
    assert await storage.verify_ledger() == []


async def test_a_batch_writes_exactly_what_its_steps_write_one_by_one(storage):
    """On PostgreSQL a batch runs in the function of migration 0005 and a lone step in its
    own statement: the two must not drift apart. The same steps, applied one by one on one
    account and as one batch on another, give the same results, ledger and wallet."""

    async def run(batched: bool) -> tuple[list, list, tuple[int, int]]:
        account = await funded_account(storage, 100)
        key = await storage.create_api_key(
            account_id=account.id, key_hash=("b" if batched else "s") * 64, prefix="omx_live_kkkkkk", rpm=None
        )
        first = await storage.create_hold(account_id=account.id, request_id="r1", amount=40, expires_at=_later())
        second = await storage.create_hold(account_id=account.id, request_id="r2", amount=20, expires_at=_later())
        context = HoldContext(key_id=key.id, model="gpt-4o-mini", provider="azure", stream=True)
        steps = [
            NewHold(account_id=account.id, request_id="r3", amount=30, expires_at=_later(), context=context),
            FinalizeHold(hold_id=first.id, charge=10),
            FinalizeHold(hold_id=second.id, charge=500),  # more than held: charged the hold
            NewHold(account_id=account.id, request_id="r4", amount=200, expires_at=_later()),  # unfunded
            FinalizeHold(hold_id=first.id, void=True),  # already final
            NewHold(account_id=account.id, request_id="r5", amount=40, expires_at=_later()),  # exactly what is left
        ]
        if batched:
            results = await storage.apply_wallet_ops(steps)
        else:
            results = [(await storage.apply_wallet_ops([step]))[0] for step in steps]
        shown: list[Any] = []
        for result in results:
            if isinstance(result, Settlement):
                wallet = result.wallet
                shown.append((result.charged, result.released, result.already_final, wallet.balance, wallet.locked))
            else:
                shown.append(None if result is None else (result.request_id, result.amount))
        ledger = [(e.type, e.amount, e.balance_after, e.locked_after, e.request_id)
                  for e in await storage.ledger_entries(account.id)]  # fmt: skip
        wallet = await storage.get_wallet(account.id)
        return shown, ledger, (wallet.balance, wallet.locked)

    one_by_one, batched = await run(batched=False), await run(batched=True)
    assert one_by_one == batched
    shown, ledger, wallet = batched
    assert shown[3] is None and shown[4][2] is True and shown[2][:2] == (20, 0)
    assert shown[5] == ("r5", 40) and wallet == (70, 70)
    assert await storage.verify_ledger() == []


async def test_a_hold_for_a_revoked_key_is_refused(storage):
    account = await funded_account(storage, 100)
    key = await storage.create_api_key(account_id=account.id, key_hash="k" * 64, prefix="omx_live_kkkkkk", rpm=None)
    context = HoldContext(key_id=key.id, model="gpt-4o-mini")
    assert await storage.create_hold(
        account_id=account.id, request_id="r1", amount=10, expires_at=_later(), context=context
    )
    assert await storage.revoke_api_key(key.id)
    before = await storage.ledger_entries(account.id)
    with pytest.raises(KeyRevoked):
        await storage.create_hold(
            account_id=account.id, request_id="r2", amount=10, expires_at=_later(), context=context
        )
    with pytest.raises(KeyRevoked):
        await storage.apply_wallet_ops(
            [NewHold(account_id=account.id, request_id="r3", amount=1, expires_at=_later()),
             NewHold(account_id=account.id, request_id="r4", amount=1, expires_at=_later(), context=context)]
        )  # fmt: skip
    assert await storage.ledger_entries(account.id) == before
    assert (await storage.get_wallet(account.id)).locked == 10


@pytest.mark.parametrize(("charge", "charged", "released"), [(30, 30, 70), (150, 100, 0), (100, 100, 0), (0, 0, 100)])
async def test_settle(storage, charge, charged, released):
    account = await funded_account(storage, 1000)
    hold = await storage.create_hold(account_id=account.id, request_id="req_s", amount=100, expires_at=_later())
    settlement = await storage.settle_hold(hold.id, charge)
    assert settlement.hold_id == hold.id and not settlement.already_final
    assert (settlement.charged, settlement.released) == (charged, released)
    assert settlement.wallet == wallet_of(account.id, 1000 - charged, 0)
    assert await storage.get_wallet(account.id) == settlement.wallet
    rows = [
        (e.type, e.amount, e.balance_after, e.locked_after, e.hold_id, e.request_id)
        for e in (await storage.ledger_entries(account.id))[2:]
    ]
    expected = []
    if charged:
        expected.append(("charge", charged, 1000 - charged, 100 - charged, hold.id, "req_s"))
    if released:
        expected.append(("release", released, 1000 - charged, 0, hold.id, "req_s"))
    assert rows == expected
    assert await storage.verify_ledger() == []


async def test_void(storage, database_url, aio_loop):
    account = await funded_account(storage, 1000)
    hold = await storage.create_hold(account_id=account.id, request_id="req_v", amount=400, expires_at=_later())
    settlement = await storage.void_hold(hold.id)
    assert (settlement.charged, settlement.released, settlement.already_final) == (0, 400, False)
    assert settlement.wallet == wallet_of(account.id, 1000, 0)
    last = (await storage.ledger_entries(account.id))[-1]
    assert (last.type, last.amount, last.balance_after, last.locked_after) == ("release", 400, 1000, 0)
    states = await raw(database_url, aio_loop, "SELECT state, charged FROM holds")
    assert states == [("voided", 0)]


async def test_finalize_is_idempotent(storage, database_url, aio_loop):
    account = await funded_account(storage, 1000)
    hold = await storage.create_hold(account_id=account.id, request_id="r", amount=100, expires_at=_later())
    first = await storage.settle_hold(hold.id, 40)
    entries = await storage.ledger_entries(account.id)
    for again in (await storage.settle_hold(hold.id, 90), await storage.void_hold(hold.id)):
        assert (again.charged, again.released, again.already_final) == (0, 0, True)
        assert again.wallet == first.wallet
    assert await storage.ledger_entries(account.id) == entries
    assert await raw(database_url, aio_loop, "SELECT state, charged FROM holds") == [("posted", 40)]


async def test_concurrent_settle_and_void_finalize_once(storage, database_url, aio_loop):
    account = await funded_account(storage, 10_000)
    holds = [
        await storage.create_hold(account_id=account.id, request_id=f"r{i}", amount=100, expires_at=_later())
        for i in range(20)
    ]
    results = []

    async def finalize(hold, void):
        if void:
            results.append(await storage.void_hold(hold.id))
        else:
            results.append(await storage.settle_hold(hold.id, 60))

    async with trio.open_nursery() as nursery:
        for hold in holds:
            for void in (False, True, False):
                nursery.start_soon(finalize, hold, void)
    for hold in holds:
        mine = [r for r in results if r.hold_id == hold.id]
        assert sorted(r.already_final for r in mine) == [False, True, True]
    rows = await raw(database_url, aio_loop, "SELECT type, COUNT(*) FROM ledger GROUP BY type")
    counts = dict(rows)
    assert counts["hold"] == 20 and counts["release"] == 20
    assert await storage.verify_ledger() == []


async def test_finalize_errors(storage):
    with pytest.raises(NotFound):
        await storage.settle_hold("hold_missing", 1)
    with pytest.raises(NotFound):
        await storage.void_hold("hold_missing")
    account = await funded_account(storage, 100)
    hold = await storage.create_hold(account_id=account.id, request_id="r", amount=10, expires_at=_later())
    with pytest.raises(ValueError):
        await storage.settle_hold(hold.id, -1)
    assert (await storage.get_wallet(account.id)).locked == 10


async def test_expire_holds(storage, database_url, aio_loop):
    account = await funded_account(storage, 1000)
    other = await funded_account(storage, 1000)
    now = dt.datetime.now(UTC)
    expired = now - dt.timedelta(seconds=1)
    past = [
        await storage.create_hold(account_id=acct.id, request_id=f"old{i}", amount=10 + i, expires_at=expired)
        for i, acct in enumerate([account, account, other])
    ]
    future = await storage.create_hold(
        account_id=account.id, request_id="new", amount=50, expires_at=now + dt.timedelta(hours=1)
    )
    settled = await storage.create_hold(account_id=account.id, request_id="done", amount=5, expires_at=expired)
    await storage.settle_hold(settled.id, 5)

    assert await storage.expire_holds(now) == 3
    assert await storage.get_wallet(account.id) == wallet_of(account.id, 995, 50)
    assert await storage.get_wallet(other.id) == wallet_of(other.id, 1000, 0)
    releases = [e for e in await storage.ledger_entries(account.id) if e.type == "release"]
    assert sorted(e.hold_id for e in releases) == sorted(h.id for h in past[:2])
    states = dict(await raw(database_url, aio_loop, "SELECT request_id, state FROM holds"))
    assert states == {"old0": "voided", "old1": "voided", "old2": "voided", "new": "pending", "done": "posted"}
    assert await storage.expire_holds(now) == 0
    assert (await storage.void_hold(past[0].id)).already_final
    assert (await storage.settle_hold(future.id, 50)).charged == 50
    assert await storage.verify_ledger() == []
    with pytest.raises(ValueError):
        await storage.expire_holds(dt.datetime.now())


# -- ledger verification ----------------------------------------------------------------------


async def test_verify_ledger_clean_after_a_mix(storage):
    accounts = [await funded_account(storage, 10_000) for _ in range(3)]
    empty = await storage.create_account("empty@example.com")
    rng = random.Random(7)
    open_holds = []
    for i in range(60):
        account = rng.choice(accounts)
        step = rng.random()
        if step < 0.15:
            await storage.top_up(account.id, rng.randint(1, 500))
        elif step < 0.6 or not open_holds:
            hold = await storage.create_hold(
                account_id=account.id,
                request_id=f"r{i}",
                amount=rng.randint(1, 900),
                expires_at=_later(rng.choice([-1, 5])),
            )
            if hold:
                open_holds.append(hold)
        elif step < 0.85:
            hold = open_holds.pop(rng.randrange(len(open_holds)))
            await storage.settle_hold(hold.id, rng.randint(0, 1000))
        else:
            await storage.void_hold(open_holds.pop(rng.randrange(len(open_holds))).id)
    await storage.expire_holds(dt.datetime.now(UTC))
    assert await storage.verify_ledger() == []
    assert await storage.get_wallet(empty.id) == wallet_of(empty.id, 0, 0)


async def test_verify_ledger_detects_tampering(storage, database_url, aio_loop):
    good = await funded_account(storage, 1000)
    bad = await funded_account(storage, 1000)
    await storage.create_hold(account_id=bad.id, request_id="r", amount=10, expires_at=_later())
    assert await storage.verify_ledger() == []
    await raw(database_url, aio_loop, f"UPDATE accounts SET balance = balance + 1 WHERE id = '{bad.id}'")
    problems = await storage.verify_ledger()
    assert problems and {p.account_id for p in problems} == {bad.id}
    assert any("balance 1001" in p.message for p in problems)
    assert any("last ledger row" in p.message for p in problems)

    await raw(database_url, aio_loop, f"UPDATE accounts SET locked = 0 WHERE id = '{good.id}'")
    await raw(database_url, aio_loop, f"UPDATE holds SET amount = 11 WHERE account_id = '{bad.id}'")
    messages = [p.message for p in await storage.verify_ledger() if p.account_id == bad.id]
    assert any("pending holds 11" in m for m in messages)


# -- usage ------------------------------------------------------------------------------------


async def test_request_logs(storage):
    log = request_log("req_1")
    await storage.insert_request_logs([log])
    assert await storage.get_request_log("req_1") == log
    assert await storage.get_request_log("req_missing") is None

    other = request_log("req_2", deployment=None, region=None, ttft_ms=None, stream=False, status="client_closed")
    changed = request_log("req_1", cost=1)
    await storage.insert_request_logs([changed, other, other])  # existing and repeated ids
    assert await storage.get_request_log("req_1") == log  # the first write wins
    assert await storage.get_request_log("req_2") == other
    await storage.insert_request_logs([])


async def test_request_logs_need_aware_times(storage):
    with pytest.raises(ValueError):
        await storage.insert_request_logs([request_log("req_n", created_at=dt.datetime(2025, 1, 1))])
    assert await storage.get_request_log("req_n") is None


# -- concurrency and cancellation -------------------------------------------------------------


async def test_concurrent_holds_never_overdraw(storage, database_url, aio_loop):
    """100 holds at once, through two Storage instances (as two processes would have) on an
    account that covers exactly 40: the database's conditional update is the arbiter."""
    account = await funded_account(storage, 40 * 25)
    results = []

    async def hold(store, i):
        results.append(
            await store.create_hold(account_id=account.id, request_id=f"r{i}", amount=25, expires_at=_later())
        )

    async with open_storage(database_url, loop=aio_loop) as other:
        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(hold, (storage, other)[i % 2], i)
    assert sum(r is not None for r in results) == 40
    assert await storage.get_wallet(account.id) == wallet_of(account.id, 1000, 1000)
    assert len(await storage.ledger_entries(account.id)) == 1 + 40
    assert await storage.verify_ledger() == []


async def test_cancelled_calls_are_all_or_nothing(storage, database_url, aio_loop):
    """Cancel hold-then-settle at deadlines swept from 0 to a few times its duration, so
    cancellation lands before, during and between the calls; the ledger must still verify."""
    account = await funded_account(storage, 10**12)

    start = trio.current_time()
    for i in range(5):
        await hold_then_settle(storage, account, f"rwarm{i}")
    duration = (trio.current_time() - start) / 5
    outcomes = {"cancelled": 0, "completed": 0}

    async def attempt(i, deadline):
        with trio.move_on_after(deadline) as scope:
            await hold_then_settle(storage, account, f"r{i}")
        outcomes["cancelled" if scope.cancelled_caught else "completed"] += 1

    for i in range(60):  # one at a time: each cancel hits a different phase
        await attempt(i, duration * 3 * i / 60)
    async with trio.open_nursery() as nursery:  # and many at once, queued behind each other
        for i in range(60, 120):
            nursery.start_soon(attempt, i, duration * (i - 60) / 4)
    assert outcomes["cancelled"] > 0 and outcomes["completed"] > 0, outcomes

    assert await storage.verify_ledger() == []
    holds = await raw(database_url, aio_loop, "SELECT COUNT(*) FROM holds")
    hold_rows = await raw(database_url, aio_loop, "SELECT COUNT(*) FROM ledger WHERE type = 'hold'")
    assert holds == hold_rows
    # The storage is still healthy after all those cancellations.
    wallet = await storage.top_up(account.id, 1)
    assert await storage.get_wallet(account.id) == wallet


async def test_sqlite_checkpoints_its_log_in_the_background(tmp_path):
    """While maintain() runs, the serving connection never checkpoints in a commit (that
    stalled one request in about a hundred); the background checkpoints keep the log
    copied into the database, so the next write starts it over, and stopping restores
    SQLite's own checkpoints."""
    path = str(tmp_path / "c.db")
    store = await SQLiteStorage.open(path)

    async def autocheckpoint() -> int:
        return await store._call(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    def frames_in_log() -> int:
        # A passive checkpoint reports how many frames the log holds, copied or not.
        conn = sqlite3.connect(path)
        try:
            return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        finally:
            conn.close()

    try:
        account = await funded_account(store, 10**9)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.maintain, 0.02)
            with trio.fail_after(10):
                while await autocheckpoint() != 0:
                    await trio.sleep(0.01)
                for phase in range(2):
                    for i in range(150):
                        await hold_then_settle(store, account, f"r{phase}.{i}")
                    # The first checkpoint may have begun before the last write; the second
                    # one began after it, and nothing wrote since, so it copied the whole log.
                    done = store.checkpoints
                    while store.checkpoints < done + 2:
                        await trio.sleep(0.01)
                    # Uncopied, the log would still hold the phase's 2,000-odd frames (a hold
                    # and its settle write about 16) and this write would add to them; copied,
                    # the log starts over. (Counting the frames checkpoints too, so it is done
                    # only after the write.)
                    await hold_then_settle(store, account, f"r{phase}.again")
                    assert 0 < await trio.to_thread.run_sync(frames_in_log) < 100
            nursery.cancel_scope.cancel()
        assert await autocheckpoint() == 1000
        assert (await store.get_wallet(account.id)).balance == 10**9 - 3 * 302
        assert await store.verify_ledger() == []
    finally:
        await store.aclose()


async def test_sqlite_log_stays_bounded_under_steady_writes(tmp_path):
    """Writes that never pause keep a passive checkpoint from ever emptying the log; the
    restarting checkpoint that follows a long log keeps it from growing without end."""
    store = await SQLiteStorage.open(str(tmp_path / "s.db"))
    wal = tmp_path / "s.db-wal"
    try:
        account = await funded_account(store, 10**9)
        sizes = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.maintain, 0.005)
            with trio.fail_after(60):
                for phase in range(6):
                    for i in range(250):
                        await hold_then_settle(store, account, f"r{phase}.{i}")
                    sizes.append(wal.stat().st_size)
            nursery.cancel_scope.cancel()
        assert store.checkpoints > 0
        # The file keeps its high-water mark, so one late checkpoint on a loaded machine
        # raises it for good (seen: 1.5x in a CI run); a log that is never rewound would
        # end near 6x its size after the first phase.
        assert sizes[-1] < 3 * sizes[0], sizes
        assert await store.verify_ledger() == []
    finally:
        await store.aclose()
