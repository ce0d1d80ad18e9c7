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
from typing import Sequence

import attrs

LEDGER_TYPES = ("top_up", "hold", "release", "charge", "refund", "adjustment")


@attrs.frozen(kw_only=True)
class Account:
    id: str
    email: str
    created_at: dt.datetime


@attrs.frozen(kw_only=True)
class ApiKeyRecord:
    id: str
    account_id: str
    prefix: str
    rpm: int | None  # requests per minute; None: the configured default, 0: unlimited
    tpm: int | None = None  # tokens per minute; None: the configured default, 0: unlimited
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    # Request signatures. The secrets are Fernet tokens (encrypted under OMIXA_SECRET_KEY by
    # the engine); storage never sees a plain secret.
    signature_required: bool = False
    signing_secret_enc: str | None = attrs.field(default=None, repr=False)
    previous_secret_enc: str | None = attrs.field(default=None, repr=False)
    previous_secret_expires_at: dt.datetime | None = None


@attrs.frozen(kw_only=True)
class SigningSummary:
    """What start-up checks before serving: how many live keys must sign, and one stored
    (encrypted) signing secret to try the server key on."""

    required_keys: int
    sample_secret_enc: str | None = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class WalletState:
    """Balance is what the account owns; locked is the part held by pending requests."""

    account_id: str
    balance: int
    locked: int

    @property
    def available(self) -> int:
        return self.balance - self.locked


@attrs.frozen(kw_only=True)
class Hold:
    id: str
    account_id: str
    request_id: str
    amount: int
    created_at: dt.datetime
    expires_at: dt.datetime


@attrs.frozen(kw_only=True)
class Settlement:
    """Outcome of posting or voiding a hold.

    ``charged`` is what was charged by this call (0 for a void); ``released`` what went back
    to the available balance. ``already_final`` is true when the hold had already been
    posted or voided before this call (a repeated settle changes nothing and returns the
    hold's final state with charged/released of 0).
    """

    hold_id: str
    charged: int
    released: int
    already_final: bool
    wallet: WalletState


@attrs.frozen(kw_only=True)
class LedgerEntry:
    id: int
    account_id: str
    type: str
    amount: int
    balance_after: int
    locked_after: int
    request_id: str | None
    hold_id: str | None
    created_at: dt.datetime


@attrs.frozen(kw_only=True)
class RequestLog:
    """One finished request, as the usage aggregator writes it."""

    id: str  # the request id (req_...)
    account_id: str
    key_id: str
    model: str
    provider: str
    deployment: str | None  # the configured deployment name (operator-facing)
    region: str | None
    status: str  # "ok", an error code, "client_closed" or "interrupted"
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cost: int  # nano-dollars charged
    latency_ms: int
    ttft_ms: int | None
    created_at: dt.datetime


@attrs.frozen(kw_only=True)
class LedgerProblem:
    account_id: str
    message: str


class Storage(abc.ABC):
    """One database. All methods are async (trio) and safe to call concurrently.

    Cancellation: a cancelled call either committed fully or not at all.
    """

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

    # -- wallet ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_wallet(self, account_id: str) -> WalletState | None: ...

    @abc.abstractmethod
    async def top_up(self, account_id: str, amount: int, *, note: str | None = None) -> WalletState:
        """Credit ``amount`` (> 0) with a ``top_up`` ledger row. Errors: NotFound."""

    @abc.abstractmethod
    async def create_hold(
        self, *, account_id: str, request_id: str, amount: int, expires_at: dt.datetime
    ) -> Hold | None:
        """Lock ``amount`` (> 0) if ``balance - locked >= amount``, else return None.

        One transaction: a conditional update of the account (the arbiter across
        processes), the hold row and a ``hold`` ledger row.
        """

    @abc.abstractmethod
    async def settle_hold(self, hold_id: str, charge: int) -> Settlement:
        """Post a pending hold: charge ``min(charge, amount)`` and release the rest.

        Writes a ``charge`` row (if charge > 0) and a ``release`` row (if anything is left).
        Idempotent: a hold already posted or voided is left alone (``already_final``).
        Errors: NotFound if no such hold; ValueError if charge < 0.
        """

    @abc.abstractmethod
    async def void_hold(self, hold_id: str) -> Settlement:
        """Release a pending hold entirely. Idempotent like :meth:`settle_hold`."""

    @abc.abstractmethod
    async def expire_holds(self, now: dt.datetime) -> int:
        """Void every pending hold whose ``expires_at`` is before ``now``; return the count."""

    @abc.abstractmethod
    async def ledger_entries(self, account_id: str) -> Sequence[LedgerEntry]:
        """All ledger rows of an account, oldest first."""

    @abc.abstractmethod
    async def verify_ledger(self) -> list[LedgerProblem]:
        """Recompute every account's balance and locked from the ledger and the holds.

        Returns one problem per broken invariant (empty list: all good).
        """

    # -- usage ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def insert_request_logs(self, logs: Sequence[RequestLog]) -> None:
        """Insert a batch in one transaction. A log whose id already exists is ignored
        (so a retried batch never duplicates rows)."""

    @abc.abstractmethod
    async def get_request_log(self, request_id: str) -> RequestLog | None: ...

    # -- lifecycle ------------------------------------------------------------------------
    @abc.abstractmethod
    async def aclose(self) -> None: ...
