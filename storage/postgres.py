"""PostgreSQL backend: asyncpg connections (:mod:`storage._pgpool`) driven through the
trio-asyncio bridge.

Each method is one asyncio coroutine (acquire, query or transaction, release) run once
through :class:`storage._aio.AioBridge`. The hot paths (create_hold, settle_hold, void_hold,
top_up) are each a single statement made of data-modifying CTEs: one round trip, one implicit
transaction, and asyncpg caches the prepared statement per connection.

Locking order, which keeps concurrent writers free of deadlocks: a writer that touches a hold
locks the hold row before the account row; every writer updates the account row before it
inserts ledger rows, so the row lock puts one account's ledger ids in commit order.

Errors: asyncpg and socket errors become :class:`StorageError` in
:meth:`PostgresStorage._run` (the one seam); ``MigrationError`` during open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import trio

from omixa.storage._aio import AioBridge, resolve_loop
from omixa.storage._common import (
    REQUEST_LOG_COLUMNS,
    ROLLUP_SUMS,
    bucket_start,
    check_amount,
    interrupted_log,
    latency_bin,
    log_from_hold,
    log_to_json,
    merge_rollup_rows,
    new_id,
    request_log_where,
    require_aware,
)
from omixa.storage._pgpool import ConnectionPool
from omixa.storage.base import (
    Account,
    ApiKeyRecord,
    FinalizeHold,
    Hold,
    Instance,
    LedgerEntry,
    LedgerProblem,
    NewHold,
    RequestLog,
    RequestLogFilter,
    RollupRow,
    Settlement,
    SigningSummary,
    Storage,
    TopUpResult,
    WalletOp,
    WalletState,
)
from omixa.storage.errors import IdempotencyConflict, KeyRevoked, MigrationError, NotFound, StorageError
from omixa.storage.migrations import load_migrations, pending_migrations, verify_ledger_sql

T = TypeVar("T")

_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# pg_advisory_lock key serializing migrations across processes ("omixa" in ASCII).
MIGRATION_LOCK_KEY = 0x6F6D697861
CLOSE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0


def _pool_options(url: str) -> tuple[str, dict[str, int]]:
    """Take ``pool_min_size``/``pool_max_size`` out of the URL's query (asyncpg would
    pass unknown parameters to the server as settings)."""
    parts = urlsplit(url)
    options = {"min_size": 1, "max_size": 10}
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ("pool_min_size", "pool_max_size"):
            options[key.removeprefix("pool_")] = int(value)
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), options


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
        dsn, options = _pool_options(url)
        try:
            pool = await bridge.run(_create_pool, dsn, options)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(pool, bridge)
        try:
            await bridge.run(_migrate, dsn)
        except _DRIVER_ERRORS as exc:
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
        try:
            return await self._bridge.run(fn, self._pool, *args)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    # -- accounts and keys ----------------------------------------------------------------------
    async def create_account(self, email: str) -> Account:
        account_id = new_id("acct")
        created_at = await self._run(_fetchval, _SQL.INSERT_ACCOUNT, account_id, email)
        return Account(id=account_id, email=email, created_at=created_at)

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._run(_fetchrow, _SQL.GET_ACCOUNT, account_id)
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
            _fetchval,
            _SQL.INSERT_API_KEY,
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
        row = await self._run(_fetchrow, _SQL.FIND_API_KEY, key_hash)
        return None if row is None else ApiKeyRecord(**row)

    async def rotate_signing_secret(
        self, key_id: str, signing_secret_enc: str, *, previous_expires_at: dt.datetime | None
    ) -> ApiKeyRecord:
        if previous_expires_at is not None:
            require_aware(previous_expires_at, "previous_expires_at")
        row = await self._run(_fetchrow, _SQL.ROTATE_SIGNING_SECRET, key_id, signing_secret_enc, previous_expires_at)
        if row is None:
            raise NotFound(f"no key {key_id}")
        return ApiKeyRecord(**row)

    async def signing_summary(self) -> SigningSummary:
        row = await self._run(_fetchrow, _SQL.SIGNING_SUMMARY)
        return SigningSummary(required_keys=row["required_keys"], sample_secret_enc=row["sample"])

    async def revoke_api_key(self, key_id: str) -> bool:
        return await self._run(_fetchval, _SQL.REVOKE_API_KEY, key_id) is not None

    # -- dashboard sessions -------------------------------------------------------------------
    async def create_dashboard_session(self, session_id: str, key_id: str, expires_at: dt.datetime) -> None:
        created = await self._run(
            _fetchval, _SQL.CREATE_DASHBOARD_SESSION, session_id, key_id, require_aware(expires_at, "expires_at")
        )
        if created is None:
            raise NotFound(f"no key {key_id}")

    async def dashboard_session_key(self, session_id: str) -> ApiKeyRecord | None:
        row = await self._run(_fetchrow, _SQL.DASHBOARD_SESSION_KEY, session_id)
        return None if row is None else ApiKeyRecord(**row)

    async def end_dashboard_session(self, session_id: str) -> None:
        await self._run(_execute, _SQL.END_DASHBOARD_SESSION, session_id)

    # -- wallet -----------------------------------------------------------------------------
    async def get_wallet(self, account_id: str) -> WalletState | None:
        row = await self._run(_fetchrow, _SQL.GET_WALLET, account_id)
        return None if row is None else WalletState(account_id=account_id, **row)

    async def top_up(self, account_id: str, amount: int, *, note: str | None = None) -> WalletState:
        check_amount(amount, "amount")
        row = await self._run(_fetchrow, _SQL.TOP_UP, account_id, amount, note)
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
        return await self._run(_credit_top_up, account_id, amount, idempotency_key, note)

    async def apply_wallet_ops(self, ops: Sequence[WalletOp]) -> list[Hold | Settlement | None]:
        steps: list[tuple[str, NewHold] | FinalizeHold] = []
        for op in ops:
            if isinstance(op, NewHold):
                check_amount(op.amount, "amount")
                require_aware(op.expires_at, "expires_at")
                steps.append((new_id("hold"), op))
            else:
                check_amount(op.charge, "charge", allow_zero=True)
                steps.append(op)
        return await self._run(_apply_wallet_ops, steps)

    async def expire_holds(self, now: dt.datetime) -> int:
        return await self._run(_expire_holds, require_aware(now, "now"))

    async def ledger_entries(self, account_id: str) -> Sequence[LedgerEntry]:
        rows = await self._run(_fetch, _SQL.LEDGER_ENTRIES, account_id)
        return [LedgerEntry(**r) for r in rows]

    async def list_ledger(self, account_id: str, *, limit: int, before_id: int | None = None) -> Sequence[LedgerEntry]:
        rows = await self._run(_fetch, _SQL.LIST_LEDGER, account_id, before_id, limit)
        return [LedgerEntry(**r) for r in rows]

    async def get_ledger_entry(self, account_id: str, entry_id: int) -> LedgerEntry | None:
        row = await self._run(_fetchrow, _SQL.GET_LEDGER_ENTRY, entry_id, account_id)
        return None if row is None else LedgerEntry(**row)

    async def verify_ledger(self) -> list[LedgerProblem]:
        rows = await self._run(_fetch, verify_ledger_sql())
        return [LedgerProblem(**r) for r in rows]

    # -- usage ----------------------------------------------------------------------------
    async def insert_request_logs(self, logs: Sequence[RequestLog], *, hold_ids: Sequence[str] = ()) -> None:
        if not logs and not hold_ids:
            return
        for log in logs:
            require_aware(log.created_at, "created_at")
        await self._run(_insert_request_logs_pooled, logs, list(hold_ids))

    async def get_request_log(self, request_id: str) -> RequestLog | None:
        row = await self._run(_fetchrow, _SQL.GET_REQUEST_LOG, request_id)
        return None if row is None else RequestLog(**row)

    async def list_request_logs(self, query: RequestLogFilter) -> Sequence[RequestLog]:
        where, params = request_log_where(query, lambda i: f"${i}", lambda t: require_aware(t, "time"))
        sql = (
            f"{_SQL.GET_REQUEST_LOG.split(' WHERE ')[0]} WHERE {where}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(params) + 1}"
        )
        rows = await self._run(_fetch, sql, *params, query.limit)
        return [RequestLog(**r) for r in rows]

    async def usage_rollups(
        self,
        account_id: str,
        *,
        granularity: str,
        since: dt.datetime,
        until: dt.datetime,
        model: str | None = None,
    ) -> Sequence[RollupRow]:
        bucket_start(since, granularity)  # validates the granularity
        args = (account_id, granularity, require_aware(since, "since"), require_aware(until, "until"), model)
        rows, bins = await self._run(_usage_rollups, args)
        return merge_rollup_rows(rows, bins)

    # -- process instances ----------------------------------------------------------------
    async def register_instance(self, instance: Instance) -> None:
        await self.heartbeat_instance(instance)

    async def heartbeat_instance(self, instance: Instance) -> bool:
        existed = await self._run(
            _fetchval,
            _SQL.UPSERT_INSTANCE,
            instance.id,
            instance.host,
            instance.pid,
            require_aware(instance.started_at, "started_at"),
        )
        return bool(existed)

    async def list_instances(self) -> Sequence[Instance]:
        return [Instance(**r) for r in await self._run(_fetch, _SQL.LIST_INSTANCES)]

    async def recover_instance(
        self, instance_id: str, now: dt.datetime, *, stale_after: float | None = None
    ) -> Sequence[RequestLog]:
        return await self._run(_recover_instance, instance_id, require_aware(now, "now"), stale_after)

    # -- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the pool: wait up to ``CLOSE_TIMEOUT`` for connections in use, then
        terminate. Shielded (bounded) so a cancelled caller still frees the connections."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(CLOSE_TIMEOUT + 2, shield=True):
            try:
                await self._bridge.run(_close_pool, self._pool)
            except _DRIVER_ERRORS as exc:
                raise StorageError(f"closing the PostgreSQL pool failed: {exc}") from exc


# -- asyncio side: everything below runs on the asyncio loop ---------------------------------


async def _create_pool(dsn: str, options: dict[str, int]) -> ConnectionPool:
    pool = ConnectionPool(dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": "omixa"}, **options)
    return await pool.open()


async def _close_pool(pool: ConnectionPool) -> None:
    await pool.close(CLOSE_TIMEOUT)


async def _migrate(dsn: str) -> None:
    migrations = load_migrations("postgres")
    # Its own connection, not a pooled one: the session advisory lock (held across one
    # transaction per version) then dies with the session whatever happens.
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(_SQL.CREATE_SCHEMA_MIGRATIONS)
        applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in pending_migrations(migrations, applied):
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
    finally:
        try:
            await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
        except (TimeoutError, *_DRIVER_ERRORS):
            conn.terminate()


async def _fetchval(pool: ConnectionPool, query: str, *args: Any) -> Any:
    return await pool.fetchval(query, *args)


async def _fetchrow(pool: ConnectionPool, query: str, *args: Any) -> asyncpg.Record | None:
    return await pool.fetchrow(query, *args)


async def _fetch(pool: ConnectionPool, query: str, *args: Any) -> list[asyncpg.Record]:
    return await pool.fetch(query, *args)


async def _execute(pool: ConnectionPool, query: str, *args: Any) -> None:
    await pool.execute(query, *args)


async def _credit_top_up(
    pool: ConnectionPool,
    account_id: str,
    amount: int,
    idempotency_key: str | None,
    note: str | None,
) -> TopUpResult:
    async with pool.acquire() as conn, conn.transaction():
        if idempotency_key is not None:
            # Claim the key first: a concurrent claim of the same key waits for this
            # transaction, then finds the row and credits nothing.
            claimed = await conn.fetchval(_SQL.CLAIM_TOP_UP_KEY, account_id, idempotency_key, amount)
            if claimed is None:
                first = await conn.fetchrow(_SQL.TOP_UP_KEY, account_id, idempotency_key)
                if first is None:
                    raise NotFound(f"no account {account_id!r}")
                if first["amount"] != amount:
                    raise IdempotencyConflict(
                        f"idempotency key {idempotency_key!r} was used for a top-up of another amount"
                    )
                entry = await conn.fetchrow(_SQL.GET_LEDGER_ENTRY, first["ledger_id"], account_id)
                wallet = await conn.fetchrow(_SQL.GET_WALLET, account_id)
                return TopUpResult(
                    entry=LedgerEntry(**entry),
                    wallet=WalletState(account_id=account_id, **wallet),
                    replayed=True,
                )
        row = await conn.fetchrow(_SQL.CREDIT, account_id, amount, note)
        if row is None:
            raise NotFound(f"no account {account_id!r}")
        entry = LedgerEntry(**{k: row[k] for k in row.keys() if k != "locked"} | {"account_id": account_id})
        if idempotency_key is not None:
            await conn.execute(_SQL.SET_TOP_UP_LEDGER, account_id, idempotency_key, entry.id)
        wallet = WalletState(account_id=account_id, balance=row["balance_after"], locked=row["locked"])
        return TopUpResult(entry=entry, wallet=wallet, replayed=False)


async def _insert_request_logs(
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
    await conn.execute(_SQL.INSERT_REQUEST_LOGS, *columns)


async def _insert_request_logs_pooled(pool: ConnectionPool, logs: Sequence[RequestLog], hold_ids: list[str]) -> None:
    async with pool.acquire() as conn:
        await _insert_request_logs(conn, logs, hold_ids)


async def _usage_rollups(pool: ConnectionPool, args: tuple) -> tuple[list, list]:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await conn.fetch(_SQL.ROLLUPS, *args), await conn.fetch(_SQL.ROLLUP_LATENCY, *args)


async def _recover_instance(
    pool: ConnectionPool, instance_id: str, now: dt.datetime, stale_after: float | None
) -> list[RequestLog]:
    async with pool.acquire() as conn, conn.transaction():
        if stale_after is not None:
            # Locks the row: a heartbeat waits for this transaction, or came first and wins.
            age = await conn.fetchval(_SQL.LOCK_INSTANCE_AGE, instance_id)
            if age is not None and age <= stale_after:
                return []
        holds = await conn.fetch(_SQL.INSTANCE_HOLDS, instance_id)
        # Voided as a release voids: only if still pending, exactly once.
        voided = await _wallet_ops(conn, [FinalizeHold(hold_id=h["id"], void=True) for h in holds]) if holds else []
        logs = [interrupted_log(hold, now) for hold, row in zip(holds, voided, strict=True) if not row["o_final"]]
        # Requests it settled whose logs it had not written yet: their holds kept them. Only
        # the copies read here are cleared (one settled meanwhile by a process wrongly taken
        # for dead keeps its own).
        unlogged = await conn.fetch(_SQL.INSTANCE_UNLOGGED, instance_id)
        logs += [log_from_hold(hold) for hold in unlogged]
        if logs:
            existing = {r[0] for r in await conn.fetch(_SQL.EXISTING_LOGS, [log.id for log in logs])}
            logs = [log for log in logs if log.id not in existing]
            await _insert_request_logs(conn, logs, [hold["id"] for hold in unlogged])
        await conn.execute(_SQL.DELETE_INSTANCE, instance_id)
        return logs


async def _apply_wallet_ops(
    pool: ConnectionPool, steps: list[tuple[str, NewHold] | FinalizeHold]
) -> list[Hold | Settlement | None]:
    """One statement, one round trip and one commit: a lone step's own statement of CTEs,
    a batch through ``omixa_wallet_ops`` (migration 0005), which runs those same statements
    step by step. The lone statement is kept because it is faster alone: about 75 µs less
    per hold or settle at one connection, measured through trio-asyncio."""
    async with pool.acquire() as conn:
        if len(steps) == 1:
            return [await _lone_step(conn, steps[0])]
        rows = await _wallet_ops(conn, steps)
    results: list[Hold | Settlement | None] = []
    for step, row in zip(steps, rows, strict=True):
        if isinstance(step, FinalizeHold):
            wallet = WalletState(account_id=row["o_account_id"], balance=row["o_balance"], locked=row["o_locked"])
            results.append(Settlement(
                hold_id=step.hold_id, charged=row["o_charged"], released=row["o_released"],
                already_final=row["o_final"], wallet=wallet,
            ))  # fmt: skip
        elif row["o_created_at"] is None:
            results.append(None)  # refused for want of funds
        else:
            hold_id, op = step
            results.append(Hold(
                id=hold_id, account_id=op.account_id, request_id=op.request_id, amount=op.amount,
                created_at=row["o_created_at"], expires_at=row["o_expires_at"],
            ))  # fmt: skip
    return results


async def _lone_step(conn: asyncpg.Connection, step: tuple[str, NewHold] | FinalizeHold) -> Hold | Settlement | None:
    if isinstance(step, FinalizeHold):
        log = None if step.log is None else log_to_json(step.log)
        if step.void:
            return await _finalize(conn, step.hold_id, 0, "voided", log)
        return await _finalize(conn, step.hold_id, step.charge, "posted", log)
    hold_id, op = step
    context = op.context
    row = await conn.fetchrow(
        _SQL.CREATE_HOLD,
        hold_id,
        op.account_id,
        op.amount,
        op.request_id,
        op.expires_at,
        context.instance_id,
        context.key_id,
        context.model,
        context.provider,
        context.stream,
    )
    if row is None:
        if context.key_id is not None and await conn.fetchval(_SQL.KEY_REVOKED, context.key_id):
            raise KeyRevoked(f"key {context.key_id!r} is revoked")
        if await conn.fetchval(_SQL.ACCOUNT_EXISTS, op.account_id) is None:
            raise NotFound(f"no account {op.account_id!r}")
        return None
    return Hold(
        id=hold_id,
        account_id=op.account_id,
        request_id=op.request_id,
        amount=op.amount,
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


async def _finalize(
    conn: asyncpg.Connection, hold_id: str, charge: int, state: str, log: str | None = None
) -> Settlement:
    row = await conn.fetchrow(_SQL.FINALIZE_HOLD, hold_id, charge, state, log)
    if row is not None:
        wallet = WalletState(account_id=row["account_id"], balance=row["balance"], locked=row["locked"])
        return Settlement(
            hold_id=hold_id,
            charged=row["charged"],
            released=row["released"],
            already_final=False,
            wallet=wallet,
        )
    # Not pending (or no such hold): report the current state, change nothing.
    row = await conn.fetchrow(_SQL.HOLD_WALLET, hold_id)
    if row is None:
        raise NotFound(f"no hold {hold_id!r}")
    return Settlement(hold_id=hold_id, charged=0, released=0, already_final=True, wallet=WalletState(**row))


async def _wallet_ops(
    conn: asyncpg.Connection, steps: Sequence[tuple[str, NewHold] | FinalizeHold]
) -> list[asyncpg.Record]:
    """Run ``steps`` through ``omixa_wallet_ops``: one result row per step, in order.

    Errors: KeyRevoked, NotFound (the statement, and with it every step, rolled back).
    """
    columns: list[list[Any]] = [[] for _ in range(12)]
    for step in steps:
        if isinstance(step, FinalizeHold):
            values: tuple[Any, ...] = (
                "voided" if step.void else "posted", step.hold_id, 0 if step.void else step.charge,
                None, None, None, None, None, None, None, None,
                None if step.log is None else log_to_json(step.log),
            )  # fmt: skip
        else:
            hold_id, op = step
            context = op.context
            values = (
                "hold", hold_id, op.amount, op.account_id, op.request_id, op.expires_at,
                context.instance_id, context.key_id, context.model, context.provider, context.stream,
                None,
            )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    try:
        return await conn.fetch(_SQL.WALLET_OPS, *columns)
    except asyncpg.PostgresError as exc:
        refused = _WALLET_REFUSALS.get(getattr(exc, "sqlstate", None) or "")
        if refused is None:
            raise
        raise refused(getattr(exc, "message", str(exc))) from None


# What omixa_wallet_ops raises for a step it cannot serve (its SQLSTATE).
_WALLET_REFUSALS: dict[str, type[Exception]] = {"OX001": KeyRevoked, "OX002": NotFound, "OX003": NotFound}


async def _expire_holds(pool: ConnectionPool, now: dt.datetime) -> int:
    async with pool.acquire() as conn, conn.transaction():
        # SKIP LOCKED: a hold being settled right now is the settler's; leave it. Sorted by
        # account so concurrent sweepers lock accounts in the same order.
        holds = await conn.fetch(_SQL.LOCK_EXPIRED_HOLDS, now)
        if not holds:
            return 0
        by_account: dict[str, list[asyncpg.Record]] = {}
        for hold in holds:
            by_account.setdefault(hold["account_id"], []).append(hold)
        ledger_rows = []
        for account_id, account_holds in by_account.items():
            total = sum(h["amount"] for h in account_holds)
            wallet = await conn.fetchrow(_SQL.RELEASE_LOCKED, account_id, total)
            # Each release row shows the wallet after that row: count down to the final state.
            locked = wallet["locked"] + total
            for hold in account_holds:
                locked -= hold["amount"]
                ledger_rows.append(
                    (account_id, hold["amount"], wallet["balance"], locked, hold["request_id"], hold["id"])
                )
        await conn.executemany(_SQL.INSERT_RELEASE, ledger_rows)
        await conn.execute(_SQL.VOID_HOLDS, [h["id"] for h in holds])
        return len(holds)


class _SQL:
    """The statements, in one place. asyncpg prepares and caches each per connection."""

    CREATE_SCHEMA_MIGRATIONS = """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version     INTEGER PRIMARY KEY,
            name        TEXT NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now())"""
    INSERT_ACCOUNT = "INSERT INTO accounts (id, email) VALUES ($1, $2) RETURNING created_at"
    GET_ACCOUNT = "SELECT id, email, created_at FROM accounts WHERE id = $1"
    ACCOUNT_EXISTS = "SELECT 1 FROM accounts WHERE id = $1"
    KEY_REVOKED = "SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1"
    # Insert only if the account exists: no row back means NotFound, without relying on
    # catching a foreign-key violation.
    INSERT_API_KEY = """
        INSERT INTO api_keys (id, account_id, key_hash, prefix, rpm, tpm, signature_required,
                              signing_secret_enc)
        SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $2)
        RETURNING created_at"""
    KEY_COLUMNS = """id, account_id, prefix, rpm, tpm, created_at, revoked_at, signature_required,
        signing_secret_enc, previous_secret_enc, previous_secret_expires_at"""
    FIND_API_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
    # SET expressions read the row's old values: the replaced secret becomes the previous one
    # when there is a grace period ($3), else it is dropped.
    ROTATE_SIGNING_SECRET = f"""
        UPDATE api_keys SET
            previous_secret_enc = CASE WHEN $3::timestamptz IS NULL THEN NULL
                                       ELSE signing_secret_enc END,
            previous_secret_expires_at = CASE WHEN $3::timestamptz IS NULL
                                              OR signing_secret_enc IS NULL THEN NULL ELSE $3 END,
            signing_secret_enc = $2
        WHERE id = $1
        RETURNING {KEY_COLUMNS}"""
    SIGNING_SUMMARY = """
        SELECT (SELECT count(*) FROM api_keys
                WHERE signature_required AND revoked_at IS NULL) AS required_keys,
               (SELECT signing_secret_enc FROM api_keys
                WHERE signing_secret_enc IS NOT NULL AND revoked_at IS NULL
                ORDER BY created_at DESC LIMIT 1) AS sample"""
    REVOKE_API_KEY = """
        UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
        RETURNING id"""
    # One statement: forget expired sessions, then add this one (none if the key is unknown).
    CREATE_DASHBOARD_SESSION = """
        WITH expired AS (DELETE FROM dashboard_sessions WHERE expires_at <= now())
        INSERT INTO dashboard_sessions (id, key_id, expires_at)
        SELECT $1, id, $3 FROM api_keys WHERE id = $2
        RETURNING id"""
    DASHBOARD_SESSION_KEY = (
        "SELECT "
        + ", ".join(f"k.{c.strip()}" for c in KEY_COLUMNS.split(","))
        + " FROM dashboard_sessions AS s JOIN api_keys AS k ON k.id = s.key_id"
        " WHERE s.id = $1 AND s.expires_at > now()"
    )
    END_DASHBOARD_SESSION = "DELETE FROM dashboard_sessions WHERE id = $1"
    GET_WALLET = "SELECT balance, locked FROM accounts WHERE id = $1"
    TOP_UP = """
        WITH a AS (
            UPDATE accounts SET balance = balance + $2 WHERE id = $1
            RETURNING balance, locked
        ), l AS (
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after, note)
            SELECT $1, 'top_up', $2, balance, locked, $3 FROM a
        )
        SELECT balance, locked FROM a"""
    # A lone hold and a lone settle or void. omixa_wallet_ops (migration 0005) runs these
    # same two statements for each step of a batch: a change to one is a change to both
    # (and a new migration).
    # The conditional update is the arbiter across processes: it locks the funds only if
    # they are available. No row back: refused (or no such account).
    CREATE_HOLD = """
        WITH a AS (
            UPDATE accounts SET locked = locked + $3
            WHERE id = $2 AND balance - locked >= $3
              AND ($7::text IS NULL OR NOT EXISTS (
                  SELECT 1 FROM api_keys WHERE id = $7 AND revoked_at IS NOT NULL))
            RETURNING balance, locked
        ), h AS (
            INSERT INTO holds (id, account_id, request_id, amount, expires_at, instance_id,
                               key_id, model, provider, stream)
            SELECT $1, $2, $4, $3, $5, $6, $7, $8, $9, $10 FROM a
            RETURNING created_at, expires_at
        ), l AS (
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                                request_id, hold_id, created_at)
            SELECT $2, 'hold', $3, a.balance, a.locked, $4, $1, h.created_at FROM a, h
        )
        SELECT created_at, expires_at FROM h"""
    # Post ($3 = 'posted') or void ($3 = 'voided', $2 = 0) in one statement, keeping the
    # request's log ($4, JSON) with the hold until the usage aggregator has written it
    # (migration 0007). The UPDATE of the hold locks it and re-checks state = 'pending' after
    # any concurrent finalizer commits, so a hold is finalized exactly once. Ledger rows show
    # the wallet after each row: the charge first, then the release.
    FINALIZE_HOLD = """
        WITH h AS (
            UPDATE holds
            SET state = $3, charged = LEAST($2::bigint, amount), finalized_at = now(),
                log = $4::jsonb
            WHERE id = $1 AND state = 'pending'
            RETURNING id, account_id, request_id, amount, charged
        ), a AS (
            UPDATE accounts AS acc
            SET balance = acc.balance - h.charged, locked = acc.locked - h.amount
            FROM h WHERE acc.id = h.account_id
            RETURNING acc.id AS account_id, acc.balance, acc.locked, h.id AS hold_id,
                      h.request_id, h.charged, h.amount - h.charged AS released
        ), l AS (
            INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                                request_id, hold_id)
            SELECT a.account_id, e.type, e.amount, a.balance, e.locked_after,
                   a.request_id, a.hold_id
            FROM a CROSS JOIN LATERAL (VALUES
                (1, 'charge', a.charged, a.locked + a.released),
                (2, 'release', a.released, a.locked)
            ) AS e (ord, type, amount, locked_after)
            WHERE e.amount > 0
            ORDER BY e.ord
        )
        SELECT account_id, balance, locked, charged, released FROM a"""
    HOLD_WALLET = """
        SELECT a.id AS account_id, a.balance, a.locked
        FROM holds h JOIN accounts a ON a.id = h.account_id WHERE h.id = $1"""
    # A batch of holds and settles, one array element per step (migrations 0005 and 0007).
    WALLET_OPS = """
        SELECT * FROM omixa_wallet_ops($1::text[], $2::text[], $3::bigint[], $4::text[],
            $5::text[], $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[],
            $11::boolean[], $12::jsonb[]) ORDER BY o_step"""
    LOCK_EXPIRED_HOLDS = """
        SELECT id, account_id, request_id, amount FROM holds
        WHERE state = 'pending' AND expires_at < $1
        ORDER BY account_id, id
        FOR UPDATE SKIP LOCKED"""
    RELEASE_LOCKED = """
        UPDATE accounts SET locked = locked - $2 WHERE id = $1 RETURNING balance, locked"""
    INSERT_RELEASE = """
        INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,
                            request_id, hold_id)
        VALUES ($1, 'release', $2, $3, $4, $5, $6)"""
    VOID_HOLDS = """
        UPDATE holds SET state = 'voided', finalized_at = now() WHERE id = ANY($1::text[])"""
    LEDGER_ENTRIES = """
        SELECT id, account_id, type, amount, balance_after, locked_after, request_id,
               hold_id, created_at
        FROM ledger WHERE account_id = $1 ORDER BY id"""
    _LEDGER_SELECT = """
        SELECT id, account_id, type, amount, balance_after, locked_after, request_id,
               hold_id, created_at FROM ledger"""
    LIST_LEDGER = f"""{_LEDGER_SELECT}
        WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"""
    GET_LEDGER_ENTRY = f"{_LEDGER_SELECT} WHERE id = $1 AND account_id = $2"
    CLAIM_TOP_UP_KEY = """
        INSERT INTO top_up_requests (account_id, idempotency_key, amount, ledger_id, created_at)
        SELECT $1, $2, $3, 0, now() WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1)
        ON CONFLICT (account_id, idempotency_key) DO NOTHING
        RETURNING 1"""
    TOP_UP_KEY = """
        SELECT amount, ledger_id FROM top_up_requests
        WHERE account_id = $1 AND idempotency_key = $2"""
    SET_TOP_UP_LEDGER = """
        UPDATE top_up_requests SET ledger_id = $3 WHERE account_id = $1 AND idempotency_key = $2"""
    CREDIT = """
        WITH a AS (
            UPDATE accounts SET balance = balance + $2 WHERE id = $1
            RETURNING balance, locked
        )
        INSERT INTO ledger (account_id, type, amount, balance_after, locked_after, note)
        SELECT $1, 'top_up', $2, balance, locked, $3 FROM a
        RETURNING id, type, amount, balance_after, locked_after, locked_after AS locked,
                  request_id, hold_id, created_at"""
    _LOG_TYPES = (
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "text",
        "boolean",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "bigint",
        "timestamptz",
    )
    _LOG_INPUT = ", ".join(f"${i}::{t}[]" for i, t in enumerate((*_LOG_TYPES, "integer"), 1))
    _HOLD_IDS = f"${len(_LOG_TYPES) + 2}::text[]"  # the holds whose copies of the logs go
    _LOG_COLUMNS = ", ".join(REQUEST_LOG_COLUMNS)
    _ROLLUP_KEY = "account_id, granularity, bucket_start, model"
    # The logs that were new (not there already) add to the hourly and daily rollups and
    # their latency histograms; the sums as rollup_deltas (storage/_common.py) makes them
    # for SQLite. The holds that kept a copy of a log forget it (migration 0007).
    INSERT_REQUEST_LOGS = f"""
        WITH cleared AS (
            UPDATE holds SET log = NULL WHERE id = ANY({_HOLD_IDS}) AND log IS NOT NULL
        ), given AS (
            SELECT * FROM unnest({_LOG_INPUT}) AS t ({_LOG_COLUMNS}, bin)
        ), inserted AS (
            INSERT INTO request_logs ({_LOG_COLUMNS}) SELECT {_LOG_COLUMNS} FROM given
            ON CONFLICT (id) DO NOTHING RETURNING id
        ), new AS (
            SELECT given.*, g.granularity,
                   date_trunc(g.granularity, given.created_at, 'UTC') AS bucket_start
            FROM given JOIN inserted USING (id)
            CROSS JOIN (VALUES ('hour'), ('day')) AS g (granularity)
        ), rollups AS (
            INSERT INTO usage_rollups ({_ROLLUP_KEY}, {", ".join(ROLLUP_SUMS)})
            SELECT {_ROLLUP_KEY}, count(*),
                   count(*) FILTER (WHERE status NOT IN ('ok', 'client_closed')),
                   count(*) FILTER (WHERE status = 'client_closed'),
                   sum(prompt_tokens), sum(completion_tokens), sum(reasoning_tokens),
                   sum(cached_tokens), sum(cost), sum(latency_ms)
            FROM new GROUP BY {_ROLLUP_KEY}
            ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET
                {", ".join(f"{c} = usage_rollups.{c} + EXCLUDED.{c}" for c in ROLLUP_SUMS)}
        )
        INSERT INTO usage_rollup_latency ({_ROLLUP_KEY}, bin, count)
        SELECT {_ROLLUP_KEY}, bin, count(*) FROM new GROUP BY {_ROLLUP_KEY}, bin
        ON CONFLICT ({_ROLLUP_KEY}, bin) DO UPDATE SET count = usage_rollup_latency.count + EXCLUDED.count"""
    _ROLLUP_WHERE = """
        WHERE account_id = $1 AND granularity = $2 AND bucket_start >= $3 AND bucket_start < $4
          AND ($5::text IS NULL OR model = $5)"""
    ROLLUPS = (
        f"SELECT bucket_start, model, {', '.join(ROLLUP_SUMS)} FROM usage_rollups"
        f" {_ROLLUP_WHERE} ORDER BY bucket_start, model"
    )
    ROLLUP_LATENCY = f"SELECT bucket_start, model, bin, count FROM usage_rollup_latency {_ROLLUP_WHERE}"
    # xmax <> 0: the row existed and was updated (an insert has xmax 0).
    UPSERT_INSTANCE = """
        INSERT INTO instances (id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, now())
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
        RETURNING xmax <> 0"""
    LIST_INSTANCES = """
        SELECT id, host, pid, started_at, heartbeat_at,
               EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 AS heartbeat_age
        FROM instances ORDER BY id"""
    INSTANCE_HOLDS = """
        SELECT id, account_id, request_id, key_id, model, provider, stream, created_at
        FROM holds WHERE instance_id = $1 AND state = 'pending' ORDER BY created_at, id"""
    EXISTING_LOGS = "SELECT id FROM request_logs WHERE id = ANY($1::text[])"
    INSTANCE_UNLOGGED = """
        SELECT id, request_id, account_id, key_id, model, stream, charged, log
        FROM holds WHERE instance_id = $1 AND log IS NOT NULL"""
    LOCK_INSTANCE_AGE = """
        SELECT EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 FROM instances WHERE id = $1
        FOR UPDATE"""
    DELETE_INSTANCE = "DELETE FROM instances WHERE id = $1"
    GET_REQUEST_LOG = f"SELECT {', '.join(REQUEST_LOG_COLUMNS)} FROM request_logs WHERE id = $1"
