"""The records the storage interface (:mod:`storage.base`) takes and returns.

Money is an integer count of nano-dollars (1e-9 USD); times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt

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
class AccountSummary:
    """An account with its wallet, as the operator's account list shows it."""

    id: str
    email: str
    created_at: dt.datetime
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
    # The upstream's id of the attempt that answered (the last one tried): Azure's
    # apim-request-id, Vertex's responseId; None when it named none (or none was reached).
    upstream_request_id: str | None = None
    # For a request that ended in an error: the message the client was given with its code
    # (``status``), cut to at most 1,000 characters by the engine; None otherwise.
    error_message: str | None = None


@attrs.frozen(kw_only=True)
class TopUpResult:
    """A credited top-up: its ledger row (for a replayed idempotency key, the first one's) and
    the wallet as it stands now."""

    entry: LedgerEntry
    wallet: WalletState
    replayed: bool


@attrs.frozen(kw_only=True)
class HoldContext:
    """What a hold records about its request, so that a process dying before it settles can
    be cleaned up by another: the holding process and the request's identity."""

    instance_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    stream: bool | None = None


@attrs.frozen(kw_only=True)
class NewHold:
    """A hold to create, as one step of :meth:`Storage.apply_wallet_ops`."""

    account_id: str
    request_id: str
    amount: int
    expires_at: dt.datetime
    context: HoldContext = HoldContext()


@attrs.frozen(kw_only=True)
class FinalizeHold:
    """A hold to post (charge at most ``charge``) or void, as one step of
    :meth:`Storage.apply_wallet_ops`.

    ``log``: the request's log, kept with the hold in the same transaction (its ``cost`` is
    ignored: the hold's charge is the cost) until :meth:`Storage.insert_request_logs` writes
    it, so the record of a charged request is as durable as its charge: if the process dies
    first, :meth:`Storage.recover_instance` writes it.
    """

    hold_id: str
    charge: int = 0
    void: bool = False
    log: RequestLog | None = None


WalletOp = NewHold | FinalizeHold


@attrs.frozen(kw_only=True)
class Instance:
    """One gateway process using this database."""

    id: str
    host: str
    pid: int
    started_at: dt.datetime  # by the instance's own clock
    heartbeat_at: dt.datetime  # by the database's clock
    # Seconds since the last heartbeat, by the database's clock (filled by list_instances).
    heartbeat_age: float = 0.0


@attrs.frozen(kw_only=True)
class RequestLogFilter:
    """Which of an account's request logs to list, newest first (created_at, then id).

    ``before`` is a cursor: only rows strictly older than that (created_at, id) pair.
    """

    account_id: str
    limit: int
    before: tuple[dt.datetime, str] | None = None
    model: str | None = None
    key_id: str | None = None
    status: str | None = None
    stream: bool | None = None  # streamed requests only (True) or unstreamed only (False)
    since: dt.datetime | None = None  # created_at >= since
    until: dt.datetime | None = None  # created_at < until


@attrs.frozen(kw_only=True)
class RollupRow:
    """One (bucket, model, key) of an account's hourly or daily usage (``key_id`` is the
    logs' own: ``""`` for a request recorded without one).

    ``errors`` counts every status but ``ok`` and ``client_closed``; ``latency_bins`` maps a
    histogram bin (see :func:`storage._common.latency_bin`) to its request count.
    """

    bucket_start: dt.datetime
    model: str
    key_id: str
    requests: int
    errors: int
    client_closed: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cost: int
    latency_ms_sum: int
    latency_bins: dict[int, int]
    # Time to first token, of the requests that have one (``ttft_ms`` not null: an answer
    # came): its sum and how many requests it sums.
    ttft_ms_sum: int = 0
    ttft_count: int = 0


@attrs.frozen(kw_only=True)
class LedgerProblem:
    account_id: str
    message: str


@attrs.frozen(kw_only=True)
class StoredResponse:
    """A response the upstream stores (the Responses API's ``store``): whose it is and which
    resource holds it, so a follow-up or a lookup goes there and nowhere else."""

    id: str  # the upstream's id, e.g. "resp_..."
    account_id: str
    key_id: str
    model: str  # the catalog id it was made with
    deployment: str  # the deployment that made it
    endpoint: str  # the resource that holds it: any deployment there can reach it
    context_tokens: int  # its input plus its output tokens: what it adds to a follow-up's context
    output_tokens: int  # the most any of its output items adds to a request that sends it back
    created_at: dt.datetime


@attrs.frozen(kw_only=True)
class HoldSummary:
    """The pending holds of every account: how many, the money they lock (by the ledger's
    invariants, the sum of the accounts' ``locked``), and when the oldest was created."""

    pending: int
    locked: int
    oldest_created_at: dt.datetime | None


@attrs.frozen(kw_only=True)
class PoolStats:
    """The database connections of this process, for monitoring: the most it opens, those
    serving a call and idle ones, calls waiting for one now, and calls that had to wait
    since the storage opened (SQLite: one connection, used by one call at a time)."""

    max_size: int
    in_use: int
    idle: int
    waiting: int
    waits: int
