"""PostgreSQL backend: asyncpg connections (:mod:`.pool`) driven through the trio-asyncio
bridge.

Each method is one asyncio coroutine (acquire, query or transaction, release) run once
through :class:`~.aio.AioBridge`. The hot paths (create_hold, settle_hold, void_hold,
top_up) are each a single statement made of data-modifying CTEs: one round trip, one implicit
transaction, and asyncpg caches the prepared statement per connection.

Errors: asyncpg and socket errors become :class:`StorageError` in
:meth:`PostgresStorage._run` (the one seam); ``MigrationError`` during open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

from omixa.storage._common import (
    REQUEST_LOG_SELECT,
    StoredItemRow,
    bucket_start,
    check_amount,
    contains_pattern,
    merge_rollup_rows,
    new_id,
    public_caller,
    request_log_where,
    require_aware,
    wallet_steps,
)
from omixa.storage.aio import AioBridge, resolve_loop
from omixa.storage.base import Storage
from omixa.storage.errors import MigrationError, NotFound, StorageError
from omixa.storage.migrations import verify_ledger_sql
from omixa.storage.postgres import usage, wallet
from omixa.storage.postgres.connection import (
    CLOSE_TIMEOUT,
    DRIVER_ERRORS,
    close_pool,
    create_pool,
    execute,
    fetch,
    fetchrow,
    fetchval,
    migrate,
    pool_options,
)
from omixa.storage.postgres.pool import ConnectionPool
from omixa.storage.postgres.sql import SQL
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

T = TypeVar("T")


class PostgresStorage(Storage):
    """Storage in PostgreSQL. Open with :meth:`open`."""

    def __init__(self, pool: ConnectionPool, bridge: AioBridge) -> None:
        self._pool = pool
        self._bridge = bridge
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, loop: asyncio.AbstractEventLoop | None = None) -> PostgresStorage:
        """Connect a pool to ``url`` and apply pending migrations.

        Errors: StorageError if no trio-asyncio loop is given or running, or the server
        cannot be reached; MigrationError.
        """
        bridge = AioBridge(resolve_loop(loop))
        dsn, options = pool_options(url)
        try:
            pool = await bridge.run(create_pool, dsn, options)
        except DRIVER_ERRORS as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(pool, bridge)
        try:
            await bridge.run(migrate, dsn)
        except DRIVER_ERRORS as exc:
            await store.aclose()
            raise MigrationError(f"migrating PostgreSQL failed: {exc}") from exc
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """The seam: run ``fn(pool, *args)`` on the loop, translating driver errors.

        Cancellation: cancels the query server-side; a single statement or a transaction
        either committed or rolled back.
        """
        if self._closed:
            raise StorageError("storage is closed")
        observe, started = self.observe_call, time.perf_counter()
        try:
            return await self._bridge.run(fn, self._pool, *args)
        except DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc
        finally:
            if observe is not None:
                observe(public_caller(), time.perf_counter() - started)

    # -- accounts and keys ----------------------------------------------------------------------
    async def create_account(self, email: str) -> Account:
        account_id = new_id("acct")
        created_at = await self._run(fetchval, SQL.INSERT_ACCOUNT, account_id, email)
        return Account(id=account_id, email=email, created_at=created_at)

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._run(fetchrow, SQL.GET_ACCOUNT, account_id)
        return None if row is None else Account(**row)

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
        key_id = new_id("key")
        created_at = await self._run(
            fetchval,
            SQL.INSERT_API_KEY,
            key_id,
            account_id,
            key_hash,
            prefix,
            rpm,
            tpm,
            signature_required,
            signing_secret_enc,
        )
        if created_at is None:
            raise NotFound(f"no account {account_id!r}")
        return ApiKeyRecord(
            id=key_id,
            account_id=account_id,
            prefix=prefix,
            rpm=rpm,
            tpm=tpm,
            created_at=created_at,
            revoked_at=None,
            signature_required=signature_required,
            signing_secret_enc=signing_secret_enc,
        )

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = await self._run(fetchrow, SQL.FIND_API_KEY, key_hash)
        return None if row is None else ApiKeyRecord(**row)

    async def rotate_signing_secret(
        self, key_id: str, signing_secret_enc: str, *, previous_expires_at: dt.datetime | None
    ) -> ApiKeyRecord:
        if previous_expires_at is not None:
            require_aware(previous_expires_at, "previous_expires_at")
        row = await self._run(fetchrow, SQL.ROTATE_SIGNING_SECRET, key_id, signing_secret_enc, previous_expires_at)
        if row is None:
            raise NotFound(f"no key {key_id}")
        return ApiKeyRecord(**row)

    async def signing_summary(self) -> SigningSummary:
        row = await self._run(fetchrow, SQL.SIGNING_SUMMARY)
        assert row is not None  # two scalar subqueries: always one row
        return SigningSummary(required_keys=row["required_keys"], sample_secret_enc=row["sample"])

    async def revoke_api_key(self, key_id: str) -> bool:
        return await self._run(fetchval, SQL.REVOKE_API_KEY, key_id) is not None

    async def list_api_keys(self, account_id: str) -> Sequence[ApiKeyRecord]:
        rows = await self._run(fetch, SQL.LIST_API_KEYS, account_id)
        return [ApiKeyRecord(**row) for row in rows]

    async def key_last_used(self, account_id: str) -> dict[str, dt.datetime]:
        rows = await self._run(fetch, SQL.KEY_LAST_USED, account_id)
        return {row["id"]: row["last_used"] for row in rows if row["last_used"] is not None}

    async def list_accounts(
        self, *, email_contains: str | None, limit: int, after: str | None = None
    ) -> Sequence[AccountSummary]:
        pattern = contains_pattern(email_contains) if email_contains else None
        rows = await self._run(fetch, SQL.LIST_ACCOUNTS, pattern, after, limit)
        return [AccountSummary(**row) for row in rows]

    # -- operator sessions ------------------------------------------------------------------
    async def create_admin_session(self, session_id: str, expires_at: dt.datetime) -> None:
        await self._run(execute, SQL.CREATE_ADMIN_SESSION, session_id, require_aware(expires_at, "expires_at"))

    async def admin_session_live(self, session_id: str) -> bool:
        return await self._run(fetchval, SQL.ADMIN_SESSION_LIVE, session_id) is not None

    async def end_admin_session(self, session_id: str) -> None:
        await self._run(execute, SQL.END_ADMIN_SESSION, session_id)

    # -- dashboard sessions -------------------------------------------------------------------
    async def create_dashboard_session(self, session_id: str, key_id: str, expires_at: dt.datetime) -> None:
        created = await self._run(
            fetchval, SQL.CREATE_DASHBOARD_SESSION, session_id, key_id, require_aware(expires_at, "expires_at")
        )
        if created is None:
            raise NotFound(f"no key {key_id}")

    async def dashboard_session_key(self, session_id: str) -> ApiKeyRecord | None:
        row = await self._run(fetchrow, SQL.DASHBOARD_SESSION_KEY, session_id)
        return None if row is None else ApiKeyRecord(**row)

    async def end_dashboard_session(self, session_id: str) -> None:
        await self._run(execute, SQL.END_DASHBOARD_SESSION, session_id)

    # -- stored responses -------------------------------------------------------------------
    async def save_stored_response(self, response: StoredResponse, item_ids: Sequence[str] = ()) -> None:
        r = response
        created = require_aware(r.created_at, "created_at")
        args = (r.id, r.account_id, r.key_id, r.model, r.deployment, r.endpoint, r.context_tokens, r.output_tokens)
        await self._run(execute, SQL.SAVE_STORED_RESPONSE, *args, created, list(item_ids))

    async def find_stored_response(self, account_id: str, response_id: str) -> StoredResponse | None:
        row = await self._run(fetchrow, SQL.FIND_STORED_RESPONSE, response_id, account_id)
        return None if row is None else StoredResponse(**row)

    async def find_stored_items(self, account_id: str, item_ids: Sequence[str]) -> dict[str, StoredResponse]:
        if not item_ids:
            return {}
        rows = await self._run(fetch, SQL.FIND_STORED_ITEMS, list(item_ids), account_id)
        return {row["item_id"]: StoredItemRow(**row).response() for row in rows}

    async def delete_stored_response(self, account_id: str, response_id: str) -> bool:
        return await self._run(fetchval, SQL.DELETE_STORED_RESPONSE, response_id, account_id) is not None

    # -- wallet -----------------------------------------------------------------------------
    async def get_wallet(self, account_id: str) -> WalletState | None:
        row = await self._run(fetchrow, SQL.GET_WALLET, account_id)
        return None if row is None else WalletState(account_id=account_id, **row)

    async def top_up(self, account_id: str, amount: int, *, note: str | None = None) -> WalletState:
        check_amount(amount, "amount")
        row = await self._run(fetchrow, SQL.TOP_UP, account_id, amount, note)
        if row is None:
            raise NotFound(f"no account {account_id!r}")
        return WalletState(account_id=account_id, **row)

    async def credit_top_up(
        self,
        account_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        note: str | None = None,
    ) -> TopUpResult:
        check_amount(amount, "amount")
        return await self._run(wallet.credit_top_up, account_id, amount, idempotency_key, note)

    async def apply_wallet_ops(self, ops: Sequence[WalletOp]) -> list[Hold | Settlement | None]:
        return await self._run(wallet.apply_wallet_ops, wallet_steps(ops))

    async def expire_holds(self, now: dt.datetime) -> int:
        return await self._run(wallet.expire_holds, require_aware(now, "now"))

    async def ledger_entries(self, account_id: str) -> Sequence[LedgerEntry]:
        rows = await self._run(fetch, SQL.LEDGER_ENTRIES, account_id)
        return [LedgerEntry(**r) for r in rows]

    async def list_ledger(self, account_id: str, *, limit: int, before_id: int | None = None) -> Sequence[LedgerEntry]:
        rows = await self._run(fetch, SQL.LIST_LEDGER, account_id, before_id, limit)
        return [LedgerEntry(**r) for r in rows]

    async def get_ledger_entry(self, account_id: str, entry_id: int) -> LedgerEntry | None:
        row = await self._run(fetchrow, SQL.GET_LEDGER_ENTRY, entry_id, account_id)
        return None if row is None else LedgerEntry(**row)

    async def request_ledger(self, account_id: str, request_id: str) -> Sequence[LedgerEntry]:
        rows = await self._run(fetch, SQL.REQUEST_LEDGER, account_id, request_id)
        return [LedgerEntry(**r) for r in rows]

    async def ledger_balances(
        self, account_id: str, *, since: dt.datetime, until: dt.datetime, step_seconds: int
    ) -> Sequence[LedgerEntry]:
        since, until = require_aware(since, "since"), require_aware(until, "until")
        rows = await self._run(fetch, SQL.LEDGER_BALANCES, account_id, since, until, step_seconds)
        return [LedgerEntry(**r) for r in rows]

    async def verify_ledger(self) -> list[LedgerProblem]:
        rows = await self._run(fetch, verify_ledger_sql())
        return [LedgerProblem(**r) for r in rows]

    # -- monitoring -----------------------------------------------------------------------
    async def hold_summary(self) -> HoldSummary:
        row = await self._run(fetchrow, SQL.PENDING_HOLDS)
        assert row is not None
        return HoldSummary(pending=row["pending"], locked=row["locked"] or 0, oldest_created_at=row["oldest"])

    def pool_stats(self) -> PoolStats:
        return self._pool.stats()

    # -- usage ----------------------------------------------------------------------------
    async def insert_request_logs(self, logs: Sequence[RequestLog], *, hold_ids: Sequence[str] = ()) -> None:
        if not logs and not hold_ids:
            return
        for log in logs:
            require_aware(log.created_at, "created_at")
        await self._run(usage.insert_request_logs_pooled, logs, list(hold_ids))

    async def get_request_log(self, request_id: str) -> RequestLog | None:
        row = await self._run(fetchrow, SQL.GET_REQUEST_LOG, request_id)
        return None if row is None else RequestLog(**row)

    async def list_request_logs(self, query: RequestLogFilter) -> Sequence[RequestLog]:
        where, params = request_log_where(query, lambda i: f"${i}", lambda t: require_aware(t, "time"))
        sql = f"{REQUEST_LOG_SELECT} WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ${len(params) + 1}"
        rows = await self._run(fetch, sql, *params, query.limit)
        return [RequestLog(**r) for r in rows]

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
        bucket_start(since, granularity)  # validates the granularity
        args = (account_id, granularity, require_aware(since, "since"), require_aware(until, "until"), model, key_id)
        rows, bins = await self._run(usage.usage_rollups, args)
        return merge_rollup_rows(rows, bins)

    # -- process instances ----------------------------------------------------------------
    async def register_instance(self, instance: Instance) -> None:
        await self.heartbeat_instance(instance)

    async def heartbeat_instance(self, instance: Instance) -> bool:
        existed = await self._run(
            fetchval,
            SQL.UPSERT_INSTANCE,
            instance.id,
            instance.host,
            instance.pid,
            require_aware(instance.started_at, "started_at"),
        )
        return bool(existed)

    async def list_instances(self) -> Sequence[Instance]:
        return [Instance(**r) for r in await self._run(fetch, SQL.LIST_INSTANCES)]

    async def recover_instance(
        self, instance_id: str, now: dt.datetime, *, stale_after: float | None = None
    ) -> Sequence[RequestLog]:
        return await self._run(usage.recover_instance, instance_id, require_aware(now, "now"), stale_after)

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the pool: wait up to ``CLOSE_TIMEOUT`` for connections in use, then
        terminate. Shielded (bounded) so a cancelled caller still frees the connections."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(CLOSE_TIMEOUT + 2, shield=True):
            try:
                await self._bridge.run(close_pool, self._pool)
            except DRIVER_ERRORS as exc:
                raise StorageError(f"closing the PostgreSQL pool failed: {exc}") from exc
