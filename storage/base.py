"""The storage interface: what the engine and the CLI may ask of a database.

Two real implementations sit behind it: :mod:`storage.sqlite` (embedded default) and
:mod:`storage.postgres` (asyncpg through trio-asyncio). Both pass the same test suite.

Money is an integer count of nano-dollars (1e-9 USD) everywhere in this package.

Every balance movement writes a ledger row in the same transaction that changes the
account, so ``balance`` and ``locked`` can always be recomputed from the ledger
(:meth:`Storage.verify_ledger`).

Invariants kept by every implementation, per account:
    0 <= locked <= balance
    balance = sum(top_up) + sum(adjustment) + sum(refund) - sum(charge)
    locked  = sum(hold) - sum(release) - sum(charge)
    locked  = sum(amount of holds in state "pending")

A hold is a two-phase transfer: created ``pending``, then either ``posted`` (a charge of at
most the held amount, the rest released) or ``voided`` (all released), never both.

Errors: implementations translate their driver's exceptions into
:class:`storage.errors.StorageError` (or its subclasses) at one seam; nothing from
sqlite3 or asyncpg leaks out.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Sequence

import trio

from omixa.storage.records import (
    Account,
    AccountSummary,
    ApiKeyRecord,
    FinalizeHold,
    Hold,
    HoldContext,
    HoldSummary,
    Instance,
    LedgerEntry,
    LedgerProblem,
    NewHold,
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


class Storage(abc.ABC):
    """One database. All methods are async (trio) and safe to call concurrently.

    Cancellation: a cancelled call either committed fully or not at all.

    ``observe_call``, when set (the engine's metrics), is told each database call's name (the
    public method that made it) and its duration in seconds, cancelled or failed calls too.
    """

    observe_call: Callable[[str, float], None] | None = None

    # -- accounts and keys -------------------------------------------------------------
    @abc.abstractmethod
    async def create_account(self, email: str) -> Account: ...

    @abc.abstractmethod
    async def get_account(self, account_id: str) -> Account | None: ...

    @abc.abstractmethod
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
        """Store a key by its hash. Errors: NotFound if the account does not exist."""

    @abc.abstractmethod
    async def rotate_signing_secret(
        self, key_id: str, signing_secret_enc: str, *, previous_expires_at: dt.datetime | None
    ) -> ApiKeyRecord:
        """Make ``signing_secret_enc`` the key's signing secret in one statement.

        With ``previous_expires_at``, the secret it replaces (if any) stays valid until then;
        with None it is dropped at once (as is a previous secret from an earlier rotation).
        Errors: NotFound if no such key (a revoked key counts as existing).
        """

    @abc.abstractmethod
    async def signing_summary(self) -> SigningSummary:
        """Count the live keys marked ``signature_required`` and pick one stored secret."""

    @abc.abstractmethod
    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The key with that hash, revoked or not (the caller checks ``revoked_at``)."""

    @abc.abstractmethod
    async def revoke_api_key(self, key_id: str) -> bool:
        """Mark revoked; False if no such key. Revoking twice keeps the first time."""

    @abc.abstractmethod
    async def list_api_keys(self, account_id: str) -> Sequence[ApiKeyRecord]:
        """The account's keys, revoked ones included, newest first (none for an unknown
        account)."""

    @abc.abstractmethod
    async def key_last_used(self, account_id: str) -> dict[str, dt.datetime]:
        """For each of the account's keys with a request log, the newest log's time (keys
        never used are left out). One index seek per key (request_logs_account_key_time)."""

    @abc.abstractmethod
    async def list_accounts(
        self, *, email_contains: str | None, limit: int, after: str | None = None
    ) -> Sequence[AccountSummary]:
        """Up to ``limit`` accounts with their wallets, newest first (then by id), those
        whose email contains ``email_contains`` (case-insensitive) when given; with ``after``
        (an account id) only those that come after it in that order (none for an unknown id)."""

    # -- dashboard sessions ---------------------------------------------------------------
    @abc.abstractmethod
    async def create_dashboard_session(self, session_id: str, key_id: str, expires_at: dt.datetime) -> None:
        """Record a dashboard sign-in of ``key_id`` until ``expires_at``, and forget the
        sessions that have expired. Errors: NotFound if no such key."""

    @abc.abstractmethod
    async def dashboard_session_key(self, session_id: str) -> ApiKeyRecord | None:
        """The key of a session that exists and has not expired (by the database's clock);
        None otherwise. The key may be revoked: the caller checks ``revoked_at``."""

    @abc.abstractmethod
    async def end_dashboard_session(self, session_id: str) -> None:
        """Forget the session (signing out); a no-op if it is gone already."""

    # -- operator sessions ----------------------------------------------------------------
    @abc.abstractmethod
    async def create_admin_session(self, session_id: str, expires_at: dt.datetime) -> None:
        """Record an operator sign-in until ``expires_at``, and forget the operator sessions
        that have expired."""

    @abc.abstractmethod
    async def admin_session_live(self, session_id: str) -> bool:
        """Whether the operator session exists and has not expired (the database's clock)."""

    @abc.abstractmethod
    async def end_admin_session(self, session_id: str) -> None:
        """Forget the operator session (signing out); a no-op if it is gone already."""

    # -- wallet ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_wallet(self, account_id: str) -> WalletState | None: ...

    @abc.abstractmethod
    async def top_up(self, account_id: str, amount: int, *, note: str | None = None) -> WalletState:
        """Credit ``amount`` (> 0) with a ``top_up`` ledger row. Errors: NotFound."""

    @abc.abstractmethod
    async def credit_top_up(
        self,
        account_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        note: str | None = None,
    ) -> TopUpResult:
        """Credit ``amount`` (> 0) like :meth:`top_up`, returning its ledger row.

        With an ``idempotency_key``, the first call for (account, key) credits and every later
        one returns that first row with ``replayed`` true and credits nothing, also when the
        calls run concurrently in several processes. Errors: NotFound; IdempotencyConflict
        if the key was first used with another amount.
        """

    async def create_hold(
        self,
        *,
        account_id: str,
        request_id: str,
        amount: int,
        expires_at: dt.datetime,
        context: HoldContext = HoldContext(),
    ) -> Hold | None:
        """Lock ``amount`` (> 0) if ``balance - locked >= amount``, else return None.

        One transaction: a conditional update of the account (the arbiter across
        processes), the hold row (with ``context``) and a ``hold`` ledger row. When
        ``context.key_id`` is set, the key must still be live in that same transaction
        (a revocation by any process is seen): errors KeyRevoked; NotFound for an unknown
        account.
        """
        op = NewHold(account_id=account_id, request_id=request_id, amount=amount,
                     expires_at=expires_at, context=context)  # fmt: skip
        return (await self.apply_wallet_ops([op]))[0]  # type: ignore[return-value]

    async def settle_hold(self, hold_id: str, charge: int, *, log: RequestLog | None = None) -> Settlement:
        """Post a pending hold: charge ``min(charge, amount)`` and release the rest, keeping
        ``log`` with it (see :class:`FinalizeHold`).

        Writes a ``charge`` row (if charge > 0) and a ``release`` row (if anything is left).
        Idempotent: a hold already posted or voided is left alone (``already_final``).
        Errors: NotFound if no such hold; ValueError if charge < 0.
        """
        return (await self.apply_wallet_ops([FinalizeHold(hold_id=hold_id, charge=charge, log=log)]))[0]  # type: ignore[return-value]

    async def void_hold(self, hold_id: str, *, log: RequestLog | None = None) -> Settlement:
        """Release a pending hold entirely. Idempotent like :meth:`settle_hold`."""
        return (await self.apply_wallet_ops([FinalizeHold(hold_id=hold_id, void=True, log=log)]))[0]  # type: ignore[return-value]

    @abc.abstractmethod
    async def apply_wallet_ops(self, ops: Sequence[WalletOp]) -> list[Hold | Settlement | None]:
        """Group commit: apply ``ops`` in order in one transaction, each exactly as
        :meth:`create_hold` (a Hold, or None for want of funds) or :meth:`settle_hold` /
        :meth:`void_hold` (a Settlement) would, and return their results in order.

        All or nothing: if any step raises (NotFound, KeyRevoked, a database error), every
        step is rolled back and the error is raised; the caller may then apply the steps one
        by one to learn which failed.
        """

    @abc.abstractmethod
    async def expire_holds(self, now: dt.datetime) -> int:
        """Void every pending hold whose ``expires_at`` is before ``now``; return the count."""

    @abc.abstractmethod
    async def ledger_entries(self, account_id: str) -> Sequence[LedgerEntry]:
        """All ledger rows of an account, oldest first."""

    @abc.abstractmethod
    async def list_ledger(self, account_id: str, *, limit: int, before_id: int | None = None) -> Sequence[LedgerEntry]:
        """Up to ``limit`` ledger rows of an account, newest first, with ids below
        ``before_id`` when given (ids only grow, so pages stay stable under inserts)."""

    @abc.abstractmethod
    async def get_ledger_entry(self, account_id: str, entry_id: int) -> LedgerEntry | None:
        """The row, if it exists and belongs to the account."""

    @abc.abstractmethod
    async def request_ledger(self, account_id: str, request_id: str) -> Sequence[LedgerEntry]:
        """The account's ledger rows of one request (its hold, charge, release or refund),
        oldest first; none for a request of another account."""

    @abc.abstractmethod
    async def ledger_balances(
        self, account_id: str, *, since: dt.datetime, until: dt.datetime, step_seconds: int
    ) -> Sequence[LedgerEntry]:
        """The balance over time, oldest first: the last ledger row before ``since`` (if any:
        the balance at ``since``), then the last row of each ``step_seconds``-long bucket
        (buckets aligned to the Unix epoch) with ``since <= created_at < until``."""

    @abc.abstractmethod
    async def verify_ledger(self) -> list[LedgerProblem]:
        """Recompute every account's balance and locked from the ledger and the holds.

        Returns one problem per broken invariant (empty list: all good).
        """

    # -- usage ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def insert_request_logs(self, logs: Sequence[RequestLog], *, hold_ids: Sequence[str] = ()) -> None:
        """Insert a batch in one transaction, and add the new rows to the hourly and daily
        rollups in the same transaction. A log whose id already exists is ignored (so a
        retried batch never duplicates rows or counts them twice). The holds ``hold_ids``
        (those the logs' requests finalized with their log) forget their copy of the log in
        the same transaction."""

    @abc.abstractmethod
    async def get_request_log(self, request_id: str) -> RequestLog | None: ...

    @abc.abstractmethod
    async def list_request_logs(self, query: RequestLogFilter) -> Sequence[RequestLog]:
        """Up to ``query.limit`` of the account's logs matching the filter, newest first."""

    @abc.abstractmethod
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
        """The account's rollup rows with ``since <= bucket_start < until`` (of ``model`` and
        of ``key_id`` when given), oldest first, then by model and key. ``granularity`` is
        ``hour`` or ``day``."""

    # -- stored responses -----------------------------------------------------------------
    @abc.abstractmethod
    async def save_stored_response(self, response: StoredResponse, item_ids: Sequence[str] = ()) -> None:
        """Remember where ``response`` lives, and the ids of its output items; a second save of
        the same id (or item id) changes nothing."""

    @abc.abstractmethod
    async def find_stored_response(self, account_id: str, response_id: str) -> StoredResponse | None:
        """The account's stored response ``response_id``; None if there is none (or it is
        another account's)."""

    @abc.abstractmethod
    async def find_stored_items(self, account_id: str, item_ids: Sequence[str]) -> dict[str, StoredResponse]:
        """For each of ``item_ids`` that is an output item of one of the account's stored
        responses, that response (items of other accounts, or unknown, are left out)."""

    @abc.abstractmethod
    async def delete_stored_response(self, account_id: str, response_id: str) -> bool:
        """Forget the account's stored response and its items; False if there was none."""

    # -- process instances ----------------------------------------------------------------
    @abc.abstractmethod
    async def register_instance(self, instance: Instance) -> None:
        """Insert the row (``heartbeat_at``: the database's clock now), or refresh it."""

    @abc.abstractmethod
    async def heartbeat_instance(self, instance: Instance) -> bool:
        """Set ``heartbeat_at`` to the database's clock now. Returns False when the row was
        gone (another process took this one for dead and recovered it); the row is then
        inserted again."""

    @abc.abstractmethod
    async def list_instances(self) -> Sequence[Instance]: ...

    @abc.abstractmethod
    async def recover_instance(
        self, instance_id: str, now: dt.datetime, *, stale_after: float | None = None
    ) -> Sequence[RequestLog]:
        """Clean up after a process that is gone, in one transaction: void each of its
        pending holds (a ``release`` row each), record each such request as ``interrupted``
        (nothing charged; rollups included) unless it already has a log, write the log of
        every request it finalized but had not logged yet (kept with the hold: see
        :class:`FinalizeHold`), and forget the process. Returns the logs written.

        ``stale_after``: recover only if, inside the transaction, the instance's heartbeat is
        still older than this many seconds by the database's clock (a heartbeat that arrived
        since the caller looked wins); otherwise change nothing and return no logs."""

    # -- monitoring -----------------------------------------------------------------------
    @abc.abstractmethod
    async def hold_summary(self) -> HoldSummary:
        """Every account's pending holds: count, money locked, the oldest's creation (one
        read of the pending holds through their state index)."""

    @abc.abstractmethod
    def pool_stats(self) -> PoolStats:
        """This process's database connections, read without a call (for metrics)."""

    # -- lifecycle ------------------------------------------------------------------------
    async def maintain(self) -> None:
        """Background upkeep while a gateway serves; returns when cancelled. Nothing by
        default (the SQLite backend checkpoints its write-ahead log here)."""
        await trio.sleep_forever()

    @abc.abstractmethod
    async def aclose(self) -> None: ...
