"""SQLite backend: one connection, every call in a worker thread, one call at a time.

Times are stored as INTEGER microseconds since the Unix epoch (exact, sortable, and
comparable in SQL) and come back as timezone-aware UTC datetimes.

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
    REQUEST_LOG_COLUMNS,
    ROLLUP_SUMS,
    bucket_start,
    check_amount,
    interrupted_log,
    log_from_hold,
    log_to_json,
    merge_rollup_rows,
    new_id,
    request_log_where,
    require_aware,
    rollup_deltas,
)
from omixa.storage.base import (
    Account,
    ApiKeyRecord,
    FinalizeHold,
    Hold,
    HoldContext,
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

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
BUSY_TIMEOUT_MS = 5000
# maintain(): how often the write-ahead log is checkpointed; SQLite's own default threshold
# (in pages), restored when maintain() stops.
CHECKPOINT_SECONDS = 1.0
DEFAULT_AUTOCHECKPOINT_PAGES = 1000
# A log this long (in frames, i.e. pages) is rewound after the passive checkpoint.
RESTART_FRAMES = 1000

log = logging.getLogger("omixa.storage")


def _to_us(value: dt.datetime, name: str) -> int:
    return (require_aware(value, name) - _EPOCH) // _US


def _from_us(value: int | None) -> dt.datetime | None:
    return None if value is None else _EPOCH + dt.timedelta(microseconds=value)


def _now_us() -> int:
    return _to_us(dt.datetime.now(dt.UTC), "now")


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
            conn = await trio.to_thread.run_sync(_connect, path)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {path!r}: {exc}") from exc
        store = cls(conn, path)
        try:
            await store._call(_migrate, write=True)
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
        return await trio.to_thread.run_sync(self._run, fn, args, write, limiter=self._limiter)

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

    # -- accounts and keys ----------------------------------------------------------------------
    async def create_account(self, email: str) -> Account:
        account = Account(id=new_id("acct"), email=email, created_at=_from_us(_now_us()))
        await self._call(_insert_account, account, write=True)
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
            created_at=_from_us(_now_us()),
            revoked_at=None,
            signature_required=signature_required,
            signing_secret_enc=signing_secret_enc,
        )
        await self._call(_insert_api_key, record, key_hash, write=True)
        return record

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        return await self._one(ApiKeyRecord, f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", key_hash)

    async def rotate_signing_secret(
        self, key_id: str, signing_secret_enc: str, *, previous_expires_at: dt.datetime | None
    ) -> ApiKeyRecord:
        expires_us = None if previous_expires_at is None else _to_us(previous_expires_at, "previous_expires_at")
        record = await self._call(_rotate_signing_secret, key_id, signing_secret_enc, expires_us, write=True)
        if record is None:
            raise NotFound(f"no key {key_id}")
        return record

    async def signing_summary(self) -> SigningSummary:
        return await self._call(_signing_summary)

    async def revoke_api_key(self, key_id: str) -> bool:
        return await self._call(_revoke_api_key, key_id, _now_us(), write=True)

    # -- dashboard sessions -------------------------------------------------------------------
    async def create_dashboard_session(self, session_id: str, key_id: str, expires_at: dt.datetime) -> None:
        if not await self._call(
            _create_dashboard_session, session_id, key_id, _to_us(expires_at, "expires_at"), write=True
        ):
            raise NotFound(f"no key {key_id}")

    async def dashboard_session_key(self, session_id: str) -> ApiKeyRecord | None:
        return await self._one(ApiKeyRecord, _SESSION_KEY_SQL, session_id, _now_us())

    async def end_dashboard_session(self, session_id: str) -> None:
        await self._call(_end_dashboard_session, session_id, write=True)

    # -- wallet -----------------------------------------------------------------------------
    async def get_wallet(self, account_id: str) -> WalletState | None:
        return await self._call(_wallet, account_id)

    async def top_up(self, account_id: str, amount: int, *, note: str | None = None) -> WalletState:
        check_amount(amount, "amount")
        return await self._call(_top_up, account_id, amount, note, write=True)

    async def credit_top_up(
        self,
        account_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        note: str | None = None,
    ) -> TopUpResult:
        check_amount(amount, "amount")
        return await self._call(_credit_top_up, account_id, amount, idempotency_key, note, write=True)

    async def apply_wallet_ops(self, ops: Sequence[WalletOp]) -> list[Hold | Settlement | None]:
        steps: list[tuple[Hold, HoldContext] | FinalizeHold] = []
        for op in ops:
            if isinstance(op, NewHold):
                steps.append((_new_hold(op), op.context))
            else:
                check_amount(op.charge, "charge", allow_zero=True)
                steps.append(op)
        return await self._call(_apply_wallet_ops, steps, write=True)

    async def expire_holds(self, now: dt.datetime) -> int:
        return await self._call(_expire_holds, _to_us(now, "now"), write=True)

    async def ledger_entries(self, account_id: str) -> Sequence[LedgerEntry]:
        return await self._call(
            _records,
            LedgerEntry,
            f"{_LEDGER_SELECT} WHERE account_id = ? ORDER BY id",
            (account_id,),
        )

    async def list_ledger(self, account_id: str, *, limit: int, before_id: int | None = None) -> Sequence[LedgerEntry]:
        return await self._call(
            _records,
            LedgerEntry,
            f"{_LEDGER_SELECT} WHERE account_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (account_id, _MAX_ROW_ID if before_id is None else before_id, limit),
        )

    async def get_ledger_entry(self, account_id: str, entry_id: int) -> LedgerEntry | None:
        return await self._one(LedgerEntry, f"{_LEDGER_SELECT} WHERE id = ? AND account_id = ?", entry_id, account_id)

    async def verify_ledger(self) -> list[LedgerProblem]:
        return await self._call(_records, LedgerProblem, verify_ledger_sql(), ())

    # -- usage ----------------------------------------------------------------------------
    async def insert_request_logs(self, logs: Sequence[RequestLog], *, hold_ids: Sequence[str] = ()) -> None:
        if not logs and not hold_ids:
            return
        for log in logs:
            require_aware(log.created_at, "created_at")
        await self._call(_insert_request_logs_clearing, logs, hold_ids, write=True)

    async def get_request_log(self, request_id: str) -> RequestLog | None:
        return await self._one(RequestLog, f"{_LOG_SELECT} WHERE id = ?", request_id)

    async def list_request_logs(self, query: RequestLogFilter) -> Sequence[RequestLog]:
        where, params = request_log_where(query, lambda _i: "?", lambda t: _to_us(t, "time"))
        return await self._call(
            _records,
            RequestLog,
            f"{_LOG_SELECT} WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, query.limit),
        )

    async def usage_rollups(
        self,
        account_id: str,
        *,
        granularity: str,
        since: dt.datetime,
        until: dt.datetime,
        model: str | None = None,
    ) -> Sequence[RollupRow]:
        return await self._call(
            _usage_rollups,
            account_id,
            granularity,
            _to_us(since, "since"),
            _to_us(until, "until"),
            model,
        )

    # -- process instances ----------------------------------------------------------------
    async def register_instance(self, instance: Instance) -> None:
        await self._call(_upsert_instance, instance, write=True)

    async def heartbeat_instance(self, instance: Instance) -> bool:
        return await self._call(_upsert_instance, instance, write=True)

    async def list_instances(self) -> Sequence[Instance]:
        rows = await self._call(
            _records,
            Instance,
            "SELECT id, host, pid, started_at, heartbeat_at FROM instances ORDER BY id",
            (),
        )
        now = _from_us(_now_us())  # SQLite's clock is this machine's
        return [attrs.evolve(r, heartbeat_age=(now - r.heartbeat_at).total_seconds()) for r in rows]

    async def recover_instance(
        self, instance_id: str, now: dt.datetime, *, stale_after: float | None = None
    ) -> Sequence[RequestLog]:
        return await self._call(_recover_instance, instance_id, _to_us(now, "now"), stale_after, write=True)

    async def _one(self, cls: type[T], sql: str, *params: Any) -> T | None:
        records = await self._call(_records, cls, sql, params)
        return records[0] if records else None

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
        :data:`RESTART_FRAMES` frames, a restarting checkpoint follows the passive one. It
        holds writers back only for the little the passive one left to copy, and rewinds
        the log. While this runs, the serving connection's automatic checkpoints are off;
        they are back on when it stops.
        """
        if self._path == ":memory:":
            await trio.sleep_forever()
        checkpointer: sqlite3.Connection | None = None
        try:
            checkpointer = await trio.to_thread.run_sync(_connect_checkpointer, self._path)
            await self._call(_set_autocheckpoint, 0)
            while True:
                await trio.sleep(interval)
                try:
                    await trio.to_thread.run_sync(_checkpoint, checkpointer)
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.warning("sqlite: checkpoint failed (retried in %g s): %s", interval, exc)
        finally:
            with trio.move_on_after(10, shield=True):
                if checkpointer is not None:
                    await trio.to_thread.run_sync(checkpointer.close)
                if not self._closed:
                    await self._call(_set_autocheckpoint, DEFAULT_AUTOCHECKPOINT_PAGES)

    async def aclose(self) -> None:
        if self._closed:
            return
        # Shielded and bounded: a close that is cancelled must still release the file.
        with trio.move_on_after(10, shield=True):
            await self._call(_close)
        self._closed = True


# -- everything below runs in the worker thread ----------------------------------------------

_LOG_SELECT = f"SELECT {', '.join(REQUEST_LOG_COLUMNS)} FROM request_logs"
_INSERT_REQUEST_LOG = (
    f"INSERT INTO request_logs ({', '.join(REQUEST_LOG_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(REQUEST_LOG_COLUMNS))}) ON CONFLICT (id) DO NOTHING"
)
_LEDGER_SELECT = (
    "SELECT id, account_id, type, amount, balance_after, locked_after, request_id, hold_id, created_at FROM ledger"
)
_MAX_ROW_ID = 2**63 - 1
_UPSERT_ROLLUP = (
    f"INSERT INTO usage_rollups (account_id, granularity, bucket_start, model,"
    f" {', '.join(ROLLUP_SUMS)}) VALUES ({', '.join('?' * (4 + len(ROLLUP_SUMS)))})"
    " ON CONFLICT (account_id, granularity, bucket_start, model) DO UPDATE SET "
    + ", ".join(f"{c} = usage_rollups.{c} + excluded.{c}" for c in ROLLUP_SUMS)
)
_UPSERT_LATENCY = (
    "INSERT INTO usage_rollup_latency (account_id, granularity, bucket_start, model, bin, count)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, granularity, bucket_start, model, bin)"
    " DO UPDATE SET count = usage_rollup_latency.count + excluded.count"
)
# Columns stored as microseconds (or 0/1) that records want as datetimes (or bools).
_TIME_COLUMNS = frozenset(
    {
        "created_at",
        "revoked_at",
        "expires_at",
        "bucket_start",
        "started_at",
        "heartbeat_at",
        "previous_secret_expires_at",
    }
)
_BOOL_COLUMNS = ("stream", "signature_required")
_KEY_COLUMNS = (
    "id, account_id, prefix, rpm, tpm, created_at, revoked_at, signature_required,"
    " signing_secret_enc, previous_secret_enc, previous_secret_expires_at"
)


def _records(conn: sqlite3.Connection, cls: type[T], sql: str, params: tuple) -> list[T]:
    """Rows of ``sql`` as ``cls`` records; the query's column names are the field names."""
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    times = [i for i, name in enumerate(names) if name in _TIME_COLUMNS]
    records = []
    for row in cursor:
        values = dict(zip(names, row, strict=True))
        for i in times:
            values[names[i]] = _from_us(row[i])
        for name in _BOOL_COLUMNS:
            if name in values:
                values[name] = bool(values[name])
        records.append(cls(**values))
    return records


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


def _connect_checkpointer(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _checkpoint(conn: sqlite3.Connection) -> None:
    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames >= RESTART_FRAMES:
        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def _set_autocheckpoint(conn: sqlite3.Connection, pages: int) -> None:
    conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}").fetchall()


def _connect(path: str) -> sqlite3.Connection:
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


def _migrate(conn: sqlite3.Connection) -> None:
    # Runs inside BEGIN IMMEDIATE: the write lock makes concurrent openers take turns.
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
            (migration.version, migration.name, _now_us()),
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


def _close(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA optimize")  # cheap; keeps the planner's statistics fresh
    finally:
        conn.close()


def _execute(conn: sqlite3.Connection, sql: str, params: tuple) -> None:
    conn.execute(sql, params)


def _insert_request_logs_clearing(
    conn: sqlite3.Connection, logs: Sequence[RequestLog], hold_ids: Sequence[str]
) -> None:
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
        if conn.execute(_INSERT_REQUEST_LOG, row + (_to_us(log.created_at, "created_at"),)).rowcount:
            new.append(log)
    for account_id, granularity, delta in rollup_deltas(new):
        start_us = _to_us(delta.bucket_start, "bucket_start")
        conn.execute(
            _UPSERT_ROLLUP,
            (account_id, granularity, start_us, delta.model, *(getattr(delta, c) for c in ROLLUP_SUMS)),
        )
        conn.executemany(
            _UPSERT_LATENCY,
            [
                (account_id, granularity, start_us, delta.model, bin_, count)
                for bin_, count in delta.latency_bins.items()
            ],
        )


def _usage_rollups(
    conn: sqlite3.Connection,
    account_id: str,
    granularity: str,
    since_us: int,
    until_us: int,
    model: str | None,
) -> list[RollupRow]:
    bucket_start(_from_us(since_us), granularity)  # validates the granularity
    where = "account_id = ? AND granularity = ? AND bucket_start >= ? AND bucket_start < ?"
    params: tuple = (account_id, granularity, since_us, until_us)
    if model is not None:
        where += " AND model = ?"
        params += (model,)
    rows = _dicts(
        conn,
        f"SELECT bucket_start, model, {', '.join(ROLLUP_SUMS)} FROM usage_rollups"
        f" WHERE {where} ORDER BY bucket_start, model",
        params,
    )
    bins = _dicts(conn, f"SELECT bucket_start, model, bin, count FROM usage_rollup_latency WHERE {where}", params)
    return merge_rollup_rows(rows, bins)


def _dicts(conn: sqlite3.Connection, sql: str, params: tuple) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    rows = []
    for row in cursor:
        values = dict(zip(names, row, strict=True))
        for name in _TIME_COLUMNS.intersection(values):
            values[name] = _from_us(values[name])
        rows.append(values)
    return rows


def _upsert_instance(conn: sqlite3.Connection, instance: Instance) -> bool:
    """Refresh the heartbeat (now); insert the row if it is missing. True if it was there."""
    now_us = _now_us()
    if conn.execute("UPDATE instances SET heartbeat_at = ? WHERE id = ?", (now_us, instance.id)).rowcount:
        return True
    conn.execute(
        "INSERT INTO instances (id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
        (instance.id, instance.host, instance.pid, _to_us(instance.started_at, "started_at"), now_us),
    )
    return False


def _recover_instance(
    conn: sqlite3.Connection, instance_id: str, now_us: int, stale_after: float | None
) -> list[RequestLog]:
    if stale_after is not None:
        row = conn.execute("SELECT heartbeat_at FROM instances WHERE id = ?", (instance_id,)).fetchone()
        if row is not None and (_now_us() - row[0]) / 1e6 <= stale_after:
            return []  # it heartbeated meanwhile: alive
    holds = _dicts(
        conn,
        "SELECT id, account_id, request_id, key_id, model, provider, stream, created_at"
        " FROM holds WHERE instance_id = ? AND state = 'pending' ORDER BY created_at, id",
        (instance_id,),
    )
    now = _from_us(now_us)
    logs = []
    for hold in holds:
        if not _finalize(conn, hold["id"], 0, "voided", now_us).already_final:
            logs.append(interrupted_log(hold, now))
    # Requests it settled whose logs it had not written yet: their holds kept them.
    unlogged = _dicts(
        conn,
        "SELECT id, request_id, account_id, key_id, model, stream, charged, log"
        " FROM holds WHERE instance_id = ? AND log IS NOT NULL",
        (instance_id,),
    )
    logs += [log_from_hold(hold) for hold in unlogged]
    existing = set()
    for chunk in _chunks([log.id for log in logs], 500):
        existing.update(
            r[0]
            for r in conn.execute(f"SELECT id FROM request_logs WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        )
    logs = [log for log in logs if log.id not in existing]
    _insert_request_logs_clearing(conn, logs, [hold["id"] for hold in unlogged])
    conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
    return logs


def _insert_account(conn: sqlite3.Connection, account: Account) -> None:
    conn.execute(
        "INSERT INTO accounts (id, email, created_at) VALUES (?, ?, ?)",
        (account.id, account.email, _to_us(account.created_at, "created_at")),
    )


def _insert_api_key(conn: sqlite3.Connection, key: ApiKeyRecord, key_hash: str) -> None:
    if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (key.account_id,)).fetchone() is None:
        raise NotFound(f"no account {key.account_id!r}")
    conn.execute(
        "INSERT INTO api_keys (id, account_id, key_hash, prefix, rpm, tpm, created_at,"
        " signature_required, signing_secret_enc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key.id,
            key.account_id,
            key_hash,
            key.prefix,
            key.rpm,
            key.tpm,
            _to_us(key.created_at, "created_at"),
            int(key.signature_required),
            key.signing_secret_enc,
        ),
    )


def _rotate_signing_secret(
    conn: sqlite3.Connection, key_id: str, secret_enc: str, expires_us: int | None
) -> ApiKeyRecord | None:
    # With no grace the replaced secret goes at once; with grace it becomes the previous one
    # (a key that had no secret yet has no previous one).
    conn.execute(
        "UPDATE api_keys SET"
        " previous_secret_enc = CASE WHEN ? IS NULL THEN NULL ELSE signing_secret_enc END,"
        " previous_secret_expires_at = CASE WHEN ? IS NULL OR signing_secret_enc IS NULL"
        "   THEN NULL ELSE ? END,"
        " signing_secret_enc = ?"
        " WHERE id = ?",
        (expires_us, expires_us, expires_us, secret_enc, key_id),
    )
    found = _records(conn, ApiKeyRecord, f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
    return found[0] if found else None


def _signing_summary(conn: sqlite3.Connection) -> SigningSummary:
    required = conn.execute(
        "SELECT count(*) FROM api_keys WHERE signature_required = 1 AND revoked_at IS NULL"
    ).fetchone()[0]
    sample = conn.execute(
        "SELECT signing_secret_enc FROM api_keys WHERE signing_secret_enc IS NOT NULL"
        " AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1"
    ).fetchone()
    return SigningSummary(required_keys=required, sample_secret_enc=sample[0] if sample else None)


def _revoke_api_key(conn: sqlite3.Connection, key_id: str, now_us: int) -> bool:
    cursor = conn.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (now_us, key_id))
    return cursor.rowcount > 0


_SESSION_KEY_SQL = (
    "SELECT "
    + ", ".join(f"k.{c.strip()}" for c in _KEY_COLUMNS.split(","))
    + " FROM dashboard_sessions AS s JOIN api_keys AS k ON k.id = s.key_id"
    " WHERE s.id = ? AND s.expires_at > ?"
)


def _create_dashboard_session(conn: sqlite3.Connection, session_id: str, key_id: str, expires_us: int) -> bool:
    now = _now_us()
    conn.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (now,))
    cursor = conn.execute(
        "INSERT INTO dashboard_sessions (id, key_id, created_at, expires_at)"
        " SELECT ?, id, ?, ? FROM api_keys WHERE id = ?",
        (session_id, now, expires_us, key_id),
    )
    return cursor.rowcount > 0


def _end_dashboard_session(conn: sqlite3.Connection, session_id: str) -> None:
    conn.execute("DELETE FROM dashboard_sessions WHERE id = ?", (session_id,))


def _wallet(conn: sqlite3.Connection, account_id: str) -> WalletState | None:
    row = conn.execute("SELECT balance, locked FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        return None
    return WalletState(account_id=account_id, balance=row[0], locked=row[1])


def _ledger(
    conn: sqlite3.Connection,
    account_id: str,
    type_: str,
    amount: int,
    balance_after: int,
    locked_after: int,
    request_id: str | None = None,
    hold_id: str | None = None,
    note: str | None = None,
    now_us: int | None = None,
) -> None:
    conn.execute(
        "INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,"
        " request_id, hold_id, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            account_id,
            type_,
            amount,
            balance_after,
            locked_after,
            request_id,
            hold_id,
            note,
            _now_us() if now_us is None else now_us,
        ),
    )


def _top_up(conn: sqlite3.Connection, account_id: str, amount: int, note: str | None) -> WalletState:
    rows = conn.execute(
        "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance, locked",
        (amount, account_id),
    ).fetchall()  # fetchall: a RETURNING statement must run to completion before COMMIT
    if not rows:
        raise NotFound(f"no account {account_id!r}")
    balance, locked = rows[0]
    _ledger(conn, account_id, "top_up", amount, balance, locked, note=note)
    return WalletState(account_id=account_id, balance=balance, locked=locked)


def _credit_top_up(
    conn: sqlite3.Connection,
    account_id: str,
    amount: int,
    idempotency_key: str | None,
    note: str | None,
) -> TopUpResult:
    if idempotency_key is not None:
        # The write lock (BEGIN IMMEDIATE) is held: no other process can insert this key now.
        first = conn.execute(
            "SELECT amount, ledger_id FROM top_up_requests WHERE account_id = ? AND idempotency_key = ?",
            (account_id, idempotency_key),
        ).fetchone()
        if first is not None:
            if first[0] != amount:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was used for a top-up of another amount"
                )
            entry = _records(conn, LedgerEntry, f"{_LEDGER_SELECT} WHERE id = ?", (first[1],))[0]
            wallet = _wallet(conn, account_id)
            assert wallet is not None
            return TopUpResult(entry=entry, wallet=wallet, replayed=True)
    wallet = _top_up(conn, account_id, amount, note)
    entry = _records(
        conn,
        LedgerEntry,
        f"{_LEDGER_SELECT} WHERE account_id = ? ORDER BY id DESC LIMIT 1",
        (account_id,),
    )[0]
    if idempotency_key is not None:
        conn.execute(
            "INSERT INTO top_up_requests (account_id, idempotency_key, amount, ledger_id, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (account_id, idempotency_key, amount, entry.id, _to_us(entry.created_at, "created_at")),
        )
    return TopUpResult(entry=entry, wallet=wallet, replayed=False)


def _new_hold(op: NewHold) -> Hold:
    check_amount(op.amount, "amount")
    return Hold(
        id=new_id("hold"),
        account_id=op.account_id,
        request_id=op.request_id,
        amount=op.amount,
        created_at=_from_us(_now_us()),
        expires_at=_from_us(_to_us(op.expires_at, "expires_at")),
    )


def _apply_wallet_ops(
    conn: sqlite3.Connection, steps: list[tuple[Hold, HoldContext] | FinalizeHold]
) -> list[Hold | Settlement | None]:
    """The steps of one group commit, in order; the caller holds the write lock."""
    results: list[Hold | Settlement | None] = []
    for step in steps:
        if isinstance(step, FinalizeHold):
            charge, state = (0, "voided") if step.void else (step.charge, "posted")
            log = None if step.log is None else log_to_json(step.log)
            results.append(_finalize(conn, step.hold_id, charge, state, _now_us(), log))
        else:
            hold, context = step
            results.append(hold if _create_hold(conn, hold, context) else None)
    return results


def _create_hold(conn: sqlite3.Connection, hold: Hold, context: HoldContext) -> bool:
    if context.key_id is not None:
        key = conn.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (context.key_id,)).fetchone()
        if key is not None and key[0] is not None:
            raise KeyRevoked(f"key {context.key_id!r} is revoked")
    # The conditional update is the arbiter: it succeeds only if the funds are available.
    rows = conn.execute(
        "UPDATE accounts SET locked = locked + ?1 WHERE id = ?2 AND balance - locked >= ?1 RETURNING balance, locked",
        (hold.amount, hold.account_id),
    ).fetchall()
    if not rows:
        if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (hold.account_id,)).fetchone():
            return False
        raise NotFound(f"no account {hold.account_id!r}")
    balance, locked = rows[0]
    created_us = _to_us(hold.created_at, "created_at")
    conn.execute(
        "INSERT INTO holds (id, account_id, request_id, amount, created_at, expires_at,"
        " instance_id, key_id, model, provider, stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            hold.id,
            hold.account_id,
            hold.request_id,
            hold.amount,
            created_us,
            _to_us(hold.expires_at, "expires_at"),
            context.instance_id,
            context.key_id,
            context.model,
            context.provider,
            context.stream,
        ),
    )
    _ledger(
        conn,
        hold.account_id,
        "hold",
        hold.amount,
        balance,
        locked,
        request_id=hold.request_id,
        hold_id=hold.id,
        now_us=created_us,
    )
    return True


def _finalize(
    conn: sqlite3.Connection,
    hold_id: str,
    charge: int,
    state: str,
    now_us: int,
    log: str | None = None,
) -> Settlement:
    """Post (``state='posted'``) or void a hold, keeping the request's ``log`` (JSON) with it;
    the caller holds the write lock."""
    rows = conn.execute(
        "UPDATE holds SET state = ?, charged = MIN(?, amount), finalized_at = ?, log = ?"
        " WHERE id = ? AND state = 'pending' RETURNING account_id, request_id, amount, charged",
        (state, charge, now_us, log, hold_id),
    ).fetchall()
    if not rows:
        # Already posted or voided (or no such hold): change nothing, report the wallet.
        row = conn.execute(
            "SELECT a.balance, a.locked, a.id FROM holds h JOIN accounts a ON a.id = h.account_id WHERE h.id = ?",
            (hold_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no hold {hold_id!r}")
        wallet = WalletState(account_id=row[2], balance=row[0], locked=row[1])
        return Settlement(hold_id=hold_id, charged=0, released=0, already_final=True, wallet=wallet)
    account_id, request_id, amount, charged = rows[0]
    released = amount - charged
    balance, locked = conn.execute(
        "UPDATE accounts SET balance = balance - ?, locked = locked - ? WHERE id = ? RETURNING balance, locked",
        (charged, amount, account_id),
    ).fetchall()[0]
    # Each ledger row carries the wallet as it stands after that row: charge, then release.
    if charged:
        _ledger(
            conn,
            account_id,
            "charge",
            charged,
            balance,
            locked + released,
            request_id=request_id,
            hold_id=hold_id,
            now_us=now_us,
        )
    if released:
        _ledger(
            conn,
            account_id,
            "release",
            released,
            balance,
            locked,
            request_id=request_id,
            hold_id=hold_id,
            now_us=now_us,
        )
    wallet = WalletState(account_id=account_id, balance=balance, locked=locked)
    return Settlement(hold_id=hold_id, charged=charged, released=released, already_final=False, wallet=wallet)


def _expire_holds(conn: sqlite3.Connection, now_us: int) -> int:
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM holds WHERE state = 'pending' AND expires_at < ? ORDER BY expires_at, id",
            (now_us,),
        )
    ]
    for hold_id in ids:
        _finalize(conn, hold_id, 0, "voided", _now_us())
    return len(ids)
