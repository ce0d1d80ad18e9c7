"""The storage interface, run against both real backends (see conftest.py): opening and
migrations, accounts, keys, sessions, request logs, and SQLite's log checkpoints. The wallet
(holds, settles, the ledger) is tests/test_storage_wallet.py.

Raw SQL (to read the schema's bookkeeping or to tamper with a balance) goes straight to the
database with sqlite3 / asyncpg, never through the Storage interface.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3

import attrs
import pytest
import trio
from storage_helpers import UTC, funded_account, hold_then_settle, raw, request_log, wallet_of

from omixa.storage import (
    MigrationError,
    NotFound,
    StorageError,
    StoredResponse,
    open_storage,
)
from omixa.storage.aio import AioBridge
from omixa.storage.migrations import load_migrations
from omixa.storage.postgres.connection import pool_options as _pool_options
from omixa.storage.sqlite import SQLiteStorage


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


async def test_an_accounts_keys_are_listed_newest_first_revoked_ones_too(storage):
    mine = await storage.create_account("list@example.com")
    other = await storage.create_account("other@example.com")
    first = await storage.create_api_key(account_id=mine.id, key_hash="l1", prefix="omx_a", rpm=None)
    await trio.sleep(0.01)
    second = await storage.create_api_key(account_id=mine.id, key_hash="l2", prefix="omx_b", rpm=5, tpm=700)
    await storage.create_api_key(account_id=other.id, key_hash="l3", prefix="omx_c", rpm=None)
    await storage.revoke_api_key(first.id)
    listed = await storage.list_api_keys(mine.id)
    assert [k.id for k in listed] == [second.id, first.id]
    assert listed[0] == second and (listed[0].rpm, listed[0].tpm) == (5, 700)
    assert listed[1].revoked_at is not None
    assert await storage.list_api_keys("acct_missing") == []


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


async def test_stored_responses_belong_to_their_account(storage):
    mine = await storage.create_account("r1@example.com")
    other = await storage.create_account("r2@example.com")
    created = dt.datetime(2026, 12, 6, 10, 0, 0, 123456, tzinfo=dt.UTC)
    stored = StoredResponse(
        id="resp_abc",
        account_id=mine.id,
        key_id="key_1",
        model="gpt-4o-mini",
        deployment="eastus-1",
        endpoint="https://eastus.example.openai.azure.com",
        context_tokens=1234,
        output_tokens=34,
        created_at=created,
    )
    await storage.save_stored_response(stored, ["msg_1", "rs_1"])
    again = attrs.evolve(stored, deployment="other", context_tokens=1)
    await storage.save_stored_response(again, ["msg_2"])  # no-op, its items too
    assert await storage.find_stored_response(mine.id, "resp_abc") == stored
    assert await storage.find_stored_response(other.id, "resp_abc") is None
    assert await storage.find_stored_response(mine.id, "resp_missing") is None
    # Items sent back by reference: only the account's own are found.
    assert await storage.find_stored_items(mine.id, ["msg_1", "rs_1", "msg_2", "msg_x"]) == {
        "msg_1": stored,
        "rs_1": stored,
    }
    assert await storage.find_stored_items(other.id, ["msg_1"]) == {}
    assert await storage.find_stored_items(mine.id, []) == {}
    assert await storage.delete_stored_response(other.id, "resp_abc") is False
    assert await storage.delete_stored_response(mine.id, "resp_abc") is True
    assert await storage.find_stored_response(mine.id, "resp_abc") is None
    assert await storage.find_stored_items(mine.id, ["msg_1"]) == {}  # gone with their response
    assert await storage.delete_stored_response(mine.id, "resp_abc") is False


# -- usage ------------------------------------------------------------------------------------


async def test_request_logs(storage):
    log = request_log("req_1")
    await storage.insert_request_logs([log])
    assert await storage.get_request_log("req_1") == log
    assert await storage.get_request_log("req_missing") is None

    other = request_log(
        "req_2",
        deployment=None,
        region=None,
        ttft_ms=None,
        stream=False,
        status="client_closed",
        upstream_request_id=None,
    )
    failed = request_log(
        "req_3", status="content_filter", error_message='The response was filtered (\u00e9, "quoted", 1,000).'
    )
    changed = request_log("req_1", cost=1)
    await storage.insert_request_logs([changed, other, other, failed])  # existing and repeated ids
    assert await storage.get_request_log("req_1") == log  # the first write wins
    assert await storage.get_request_log("req_2") == other
    assert await storage.get_request_log("req_3") == failed and log.error_message is None
    await storage.insert_request_logs([])


async def test_request_logs_need_aware_times(storage):
    with pytest.raises(ValueError):
        await storage.insert_request_logs([request_log("req_n", created_at=dt.datetime(2025, 1, 1))])
    assert await storage.get_request_log("req_n") is None


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
        # raises it for good (seen: 1.5x, and once 3.2x, in CI runs). A log that is never
        # rewound grows in every phase, to near 6x its size after the first; a rewound one
        # is reused below its mark: some phase leaves the file as it was.
        assert any(later <= earlier for earlier, later in zip(sizes, sizes[1:], strict=False)), sizes
        assert sizes[-1] < 4.5 * sizes[0], sizes
        assert await store.verify_ledger() == []
    finally:
        await store.aclose()
