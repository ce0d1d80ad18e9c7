"""SQLite backend: one connection, every call in a worker thread, one call at a time.

Times are stored as INTEGER microseconds since the Unix epoch (see :mod:`.rows`).

Every call runs in ``trio.to_thread.run_sync`` under a per-storage ``CapacityLimiter(1)``
(the connection is shared, so calls must not overlap) and is never abandoned on cancel: the
thread finishes, so a write transaction commits fully or rolls back, never half. Writes use
``BEGIN IMMEDIATE``, which takes the database write lock up front, so two processes sharing
the file serialize instead of failing on lock upgrade.

Errors: ``sqlite3.Error`` becomes :class:`StorageError` in :meth:`SQLiteStorage._run` (the
one seam); ``MigrationError`` during open.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from omixa.storage._common import (
    LEDGER_SELECT,
    REQUEST_LOG_SELECT,
    STORED_ITEM_SELECT,
    STORED_RESPONSE_SELECT,
    StoredItemRow,
    check_amount,
    new_id,
    public_caller,
    request_log_where,
    require_aware,
    wallet_steps,
)
from omixa.storage.base import Storage
from omixa.storage.errors import MigrationError, NotFound, StorageError
from omixa.storage.migrations import verify_ledger_sql
from omixa.storage.records import (
    Account,
    AccountSummary,
    ApiKeyRecord,
    Hold,
    HoldSummary,
    Instance,
    LedgerEntry,
    LedgerProblem,
    PoolStats,
    RequestLog,
    RequestLogFilter,
    RollupRow,
    Settlement,
    SigningSummary,
    StoredResponse,
    TopUpResult,
    WalletOp,
    WalletState,
)
from omixa.storage.sqlite import accounts, connection, usage, wallet
from omixa.storage.sqlite.connection import CHECKPOINT_SECONDS, DEFAULT_AUTOCHECKPOINT_PAGES
from omixa.storage.sqlite.rows import from_us, now_us, records, to_us

T = TypeVar("T")

log = logging.getLogger("omixa.storage")


class SQLiteStorage(Storage):
    """Storage in one SQLite file (or ``:memory:``). Open with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: str = ":memory:") -> None:
        self._conn = conn
        self._path = path
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self.checkpoints = 0  # write-ahead-log checkpoints made by maintain()

    @classmethod
    async def open(cls, path: str) -> SQLiteStorage:
        """Open (creating if needed) the database at ``path`` and apply pending migrations.

        Errors: StorageError if the file cannot be opened; MigrationError.
        """
        try:
            conn = await trio.to_thread.run_sync(connection.connect, path)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {path!r}: {exc}") from exc
        store = cls(conn, path)
        try:
            await store._call(connection.migrate, write=True)
        except StorageError as exc:
            await store.aclose()
            if isinstance(exc, MigrationError):
                raise
            raise MigrationError(f"migrating {path!r} failed: {exc}") from exc
        except BaseException:
            await store.aclose()
            raise
        return store

    # -- the seam ---------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any, write: bool = False) -> T:
        """Run ``fn(conn, *args)`` in the worker thread, in a write transaction if ``write``.

        Cancellation: waits for the thread (never abandons it), so the transaction has either
        committed or rolled back when this returns or raises.
        """
        if self._closed:
            raise StorageError("storage is closed")
        observe = self.observe_call
        if observe is None:
            return await trio.to_thread.run_sync(self._run, fn, args, write, limiter=self._limiter)
        started = time.perf_counter()
        try:
            return await trio.to_thread.run_sync(self._run, fn, args, write, limiter=self._limiter)
        finally:
            observe(public_caller(), time.perf_counter() - started)

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...], write: bool) -> T:
        conn = self._conn
        try:
            if not write:
                return fn(conn, *args)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite: {exc}") from exc

    async def _records(self, cls: type[T], sql: str, *params: Any) -> list[T]:
        return await self._call(records, cls, sql, params)

    async def _one(self, cls: type[T], sql: str, *params: Any) -> T | None:
        found = await self._records(cls, sql, *params)
        return found[0] if found else None

    # -- accounts and keys ----------------------------------------------------------------------
    async def create_account(self, email: str) -> Account:
        account = Account(id=new_id("acct"), email=email, created_at=from_us(now_us()))
        await self._call(accounts.insert_account, account, write=True)
        return account

    async def get_account(self, account_id: str) -> Account | None:
        return await self._one(Account, "SELECT id, email, created_at FROM accounts WHERE id = ?", account_id)

    async def create_api_key(
        self,
        *,
        account_id: str,
        key_hash: str,
        prefix: str,
        rpm: int | None,
        tpm: int | None = None,
        signature_required: bool = False,
        signing_secret_enc: str | None = None,
    ) -> ApiKeyRecord:
        record = ApiKeyRecord(
            id=new_id("key"),
            account_id=account_id,
            prefix=prefix,
            rpm=rpm,
            tpm=tpm,
            created_at=from_us(now_us()),
            revoked_at=None,
            signature_required=signature_required,
            signing_secret_enc=signing_secret_enc,
        )
        await self._call(accounts.insert_api_key, record, key_hash, write=True)
        return record

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        return await self._one(ApiKeyRecord, accounts.FIND_API_KEY, key_hash)

    async def rotate_signing_secret(
        self, key_id: str, signing_secret_enc: str, *, previous_expires_at: dt.datetime | None
    ) -> ApiKeyRecord:
        expires_us = None if previous_expires_at is None else to_us(previous_expires_at, "previous_expires_at")
        record = await self._call(accounts.rotate_signing_secret, key_id, signing_secret_enc, expires_us, write=True)
        if record is None:
            raise NotFound(f"no key {key_id}")
        return record

    async def signing_summary(self) -> SigningSummary:
        return await self._call(accounts.signing_summary)

    async def revoke_api_key(self, key_id: str) -> bool:
        return await self._call(accounts.revoke_api_key, key_id, now_us(), write=True)

    async def list_api_keys(self, account_id: str) -> Sequence[ApiKeyRecord]:
        return await self._records(ApiKeyRecord, accounts.LIST_API_KEYS, account_id)

    # -- dashboard sessions -------------------------------------------------------------------
    async def key_last_used(self, account_id: str) -> dict[str, dt.datetime]:
        return await self._call(accounts.key_last_used, account_id)

    async def list_accounts(
        self, *, email_contains: str | None, limit: int, after: str | None = None
    ) -> Sequence[AccountSummary]:
        sql, params = accounts.list_accounts_query(email_contains, limit, after)
        return await self._records(AccountSummary, sql, *params)

    async def create_admin_session(self, session_id: str, expires_at: dt.datetime) -> None:
        await self._call(accounts.create_admin_session, session_id, to_us(expires_at, "expires_at"), write=True)

    async def admin_session_live(self, session_id: str) -> bool:
        return await self._call(accounts.admin_session_live, session_id)

    async def end_admin_session(self, session_id: str) -> None:
        await self._call(accounts.end_admin_session, session_id, write=True)

    async def create_dashboard_session(self, session_id: str, key_id: str, expires_at: dt.datetime) -> None:
        expires_us = to_us(expires_at, "expires_at")
        if not await self._call(accounts.create_dashboard_session, session_id, key_id, expires_us, write=True):
            raise NotFound(f"no key {key_id}")

    async def dashboard_session_key(self, session_id: str) -> ApiKeyRecord | None:
        return await self._one(ApiKeyRecord, accounts.SESSION_KEY, session_id, now_us())

    async def end_dashboard_session(self, session_id: str) -> None:
        await self._call(accounts.end_dashboard_session, session_id, write=True)

    # -- stored responses -------------------------------------------------------------------
    async def save_stored_response(self, response: StoredResponse, item_ids: Sequence[str] = ()) -> None:
        await self._call(accounts.save_stored_response, response, list(item_ids), write=True)

    async def find_stored_response(self, account_id: str, response_id: str) -> StoredResponse | None:
        sql = f"{STORED_RESPONSE_SELECT} WHERE id = ? AND account_id = ?"
        return await self._one(StoredResponse, sql, response_id, account_id)

    async def find_stored_items(self, account_id: str, item_ids: Sequence[str]) -> dict[str, StoredResponse]:
        if not item_ids:
            return {}
        marks = ", ".join("?" * len(item_ids))
        sql = f"{STORED_ITEM_SELECT} WHERE i.id IN ({marks}) AND i.account_id = ?"
        rows = await self._records(StoredItemRow, sql, *item_ids, account_id)
        return {row.item_id: row.response() for row in rows}

    async def delete_stored_response(self, account_id: str, response_id: str) -> bool:
        return await self._call(accounts.delete_stored_response, account_id, response_id, write=True)

    # -- wallet -----------------------------------------------------------------------------
    async def get_wallet(self, account_id: str) -> WalletState | None:
        return await self._call(wallet.wallet, account_id)

    async def top_up(self, account_id: str, amount: int, *, note: str | None = None) -> WalletState:
        check_amount(amount, "amount")
        return await self._call(wallet.top_up, account_id, amount, note, write=True)

    async def credit_top_up(
        self,
        account_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        note: str | None = None,
    ) -> TopUpResult:
        check_amount(amount, "amount")
        return await self._call(wallet.credit_top_up, account_id, amount, idempotency_key, note, write=True)

    async def apply_wallet_ops(self, ops: Sequence[WalletOp]) -> list[Hold | Settlement | None]:
        steps = wallet.hold_steps(wallet_steps(ops))
        return await self._call(wallet.apply_wallet_ops, steps, write=True)

    async def expire_holds(self, now: dt.datetime) -> int:
        return await self._call(wallet.expire_holds, to_us(now, "now"), write=True)

    async def ledger_entries(self, account_id: str) -> Sequence[LedgerEntry]:
        return await self._records(LedgerEntry, f"{LEDGER_SELECT} WHERE account_id = ? ORDER BY id", account_id)

    async def list_ledger(self, account_id: str, *, limit: int, before_id: int | None = None) -> Sequence[LedgerEntry]:
        return await self._records(
            LedgerEntry,
            f"{LEDGER_SELECT} WHERE account_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            account_id,
            wallet.MAX_ROW_ID if before_id is None else before_id,
            limit,
        )

    async def get_ledger_entry(self, account_id: str, entry_id: int) -> LedgerEntry | None:
        return await self._one(LedgerEntry, f"{LEDGER_SELECT} WHERE id = ? AND account_id = ?", entry_id, account_id)

    async def request_ledger(self, account_id: str, request_id: str) -> Sequence[LedgerEntry]:
        return await self._records(
            LedgerEntry, f"{LEDGER_SELECT} WHERE request_id = ? AND account_id = ? ORDER BY id", request_id, account_id
        )

    async def ledger_balances(
        self, account_id: str, *, since: dt.datetime, until: dt.datetime, step_seconds: int
    ) -> Sequence[LedgerEntry]:
        # Times are microseconds since the epoch: a bucket is created_at // step (floored).
        return await self._records(
            LedgerEntry,
            wallet.LEDGER_BALANCES,
            account_id,
            to_us(since, "since"),
            to_us(until, "until"),
            step_seconds * 1_000_000,
        )

    async def verify_ledger(self) -> list[LedgerProblem]:
        return await self._records(LedgerProblem, verify_ledger_sql())

    # -- monitoring -----------------------------------------------------------------------
    async def hold_summary(self) -> HoldSummary:
        count, locked, oldest = await self._call(_pending_holds)
        return HoldSummary(pending=count, locked=locked or 0, oldest_created_at=from_us(oldest))

    def pool_stats(self) -> PoolStats:
        stats = self._limiter.statistics()
        return PoolStats(
            max_size=1,
            in_use=stats.borrowed_tokens,
            idle=1 - stats.borrowed_tokens,
            waiting=stats.tasks_waiting,
            waits=0,
        )

    # -- usage ----------------------------------------------------------------------------
    async def insert_request_logs(self, logs: Sequence[RequestLog], *, hold_ids: Sequence[str] = ()) -> None:
        if not logs and not hold_ids:
            return
        for request_log in logs:
            require_aware(request_log.created_at, "created_at")
        await self._call(usage.insert_request_logs_clearing, logs, hold_ids, write=True)

    async def get_request_log(self, request_id: str) -> RequestLog | None:
        return await self._one(RequestLog, f"{REQUEST_LOG_SELECT} WHERE id = ?", request_id)

    async def list_request_logs(self, query: RequestLogFilter) -> Sequence[RequestLog]:
        where, params = request_log_where(query, lambda _i: "?", lambda t: to_us(t, "time"))
        return await self._records(
            RequestLog,
            f"{REQUEST_LOG_SELECT} WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            *params,
            query.limit,
        )

    async def usage_rollups(
        self,
        account_id: str,
        *,
        granularity: str,
        since: dt.datetime,
        until: dt.datetime,
        model: str | None = None,
        key_id: str | None = None,
    ) -> Sequence[RollupRow]:
        since_us, until_us = to_us(since, "since"), to_us(until, "until")
        return await self._call(usage.usage_rollups, account_id, granularity, since_us, until_us, model, key_id)

    # -- process instances ----------------------------------------------------------------
    async def register_instance(self, instance: Instance) -> None:
        await self._call(usage.upsert_instance, instance, write=True)

    async def heartbeat_instance(self, instance: Instance) -> bool:
        return await self._call(usage.upsert_instance, instance, write=True)

    async def list_instances(self) -> Sequence[Instance]:
        rows = await self._records(Instance, usage.LIST_INSTANCES)
        now = from_us(now_us())  # SQLite's clock is this machine's
        return [attrs.evolve(r, heartbeat_age=(now - r.heartbeat_at).total_seconds()) for r in rows]

    async def recover_instance(
        self, instance_id: str, now: dt.datetime, *, stale_after: float | None = None
    ) -> Sequence[RequestLog]:
        return await self._call(usage.recover_instance, instance_id, to_us(now, "now"), stale_after, write=True)

    # -- lifecycle ------------------------------------------------------------------------
    async def maintain(self, interval: float = CHECKPOINT_SECONDS) -> None:
        """Checkpoint the write-ahead log every ``interval`` seconds, from a connection and a
        thread of its own, until cancelled.

        SQLite otherwise checkpoints inside the commit that takes the log past 1,000 pages:
        about one request in 60 then waited for the copy and its fsync, which was most of
        the one-connection p99 in the bench (10.1 and 8.5 ms; 5.1 and 5.3 ms without it,
        at the same p50; bench/README.md). A
        passive checkpoint waits for no reader or writer, so requests' transactions go on
        while it copies. But the log only starts over from its beginning when a write finds
        it fully copied, which steady writes can keep from happening: so once the log holds
        :data:`~.connection.RESTART_FRAMES` frames, a restarting checkpoint follows the
        passive one. It holds writers back only for the little the passive one left to copy,
        and rewinds the log. While this runs, the serving connection's automatic checkpoints
        are off; they are back on when it stops.
        """
        if self._path == ":memory:":
            await trio.sleep_forever()
        checkpointer: sqlite3.Connection | None = None
        try:
            checkpointer = await trio.to_thread.run_sync(connection.connect_checkpointer, self._path)
            await self._call(connection.set_autocheckpoint, 0)
            while True:
                await trio.sleep(interval)
                try:
                    await trio.to_thread.run_sync(connection.checkpoint, checkpointer)
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.warning("sqlite: checkpoint failed (retried in %g s): %s", interval, exc)
        finally:
            with trio.move_on_after(10, shield=True):
                if checkpointer is not None:
                    await trio.to_thread.run_sync(checkpointer.close)
                if not self._closed:
                    await self._call(connection.set_autocheckpoint, DEFAULT_AUTOCHECKPOINT_PAGES)

    async def aclose(self) -> None:
        if self._closed:
            return
        # Shielded and bounded: a close that is cancelled must still release the file.
        with trio.move_on_after(10, shield=True):
            await self._call(connection.close)
        self._closed = True


def _pending_holds(conn: sqlite3.Connection) -> tuple[int, int | None, int | None]:
    row = conn.execute("SELECT count(*), sum(amount), min(created_at) FROM holds WHERE state = 'pending'").fetchone()
    return row[0], row[1], row[2]
