"""What both backends share, so they refuse the same inputs the same way and agree on what
they store: the checks and ids, the wallet steps as they come in, the request logs and rollups
as Python computes them, and the SQL text both dialects can read alike."""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from omixa.storage.records import (
    FinalizeHold,
    NewHold,
    RequestLog,
    RequestLogFilter,
    RollupRow,
    Settlement,
    StoredResponse,
    WalletOp,
    WalletState,
)

MAX_AMOUNT = 2**63 - 1  # the largest nano-dollar amount a BIGINT / INTEGER column holds


def new_id(prefix: str) -> str:
    """``acct_`` / ``key_`` / ``hold_`` + 24 hex characters."""
    return f"{prefix}_{secrets.token_hex(12)}"


def require_aware(value: dt.datetime, name: str) -> dt.datetime:
    """Errors: ValueError for a naive datetime (asyncpg would read it as UTC, SQLite cannot)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


def check_amount(value: int, name: str, *, allow_zero: bool = False) -> None:
    """Errors: ValueError for an amount outside 1..MAX_AMOUNT (0.. with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_AMOUNT:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")


def contains_pattern(text: str) -> str:
    """A LIKE pattern (with ``ESCAPE '\\'``) matching values that contain ``text`` as is."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# -- wallet steps ------------------------------------------------------------------------------

# A step of apply_wallet_ops once checked: a new hold with the id it will have, or a finalize.
WalletStep = tuple[str, NewHold] | FinalizeHold


def wallet_steps(ops: Sequence[WalletOp]) -> list[WalletStep]:
    """``ops`` checked, all of them before any runs, each new hold with a new id.

    Errors: ValueError for an amount or charge out of range, or a naive ``expires_at``.
    """
    steps: list[WalletStep] = []
    for op in ops:
        if isinstance(op, NewHold):
            check_amount(op.amount, "amount")
            require_aware(op.expires_at, "expires_at")
            steps.append((new_id("hold"), op))
        else:
            check_amount(op.charge, "charge", allow_zero=True)
            steps.append(op)
    return steps


def finalize_args(step: FinalizeHold) -> tuple[str, int, str | None]:
    """The hold's new state, the charge asked for and the log to keep with the hold (JSON): a
    void charges nothing."""
    state, charge = ("voided", 0) if step.void else ("posted", step.charge)
    return state, charge, None if step.log is None else log_to_json(step.log)


def already_final(hold_id: str, wallet: WalletState) -> Settlement:
    """What finalizing a hold that is no longer pending returns: nothing changed."""
    return Settlement(hold_id=hold_id, charged=0, released=0, already_final=True, wallet=wallet)


# -- request logs and rollups ------------------------------------------------------------------

GRANULARITIES = ("hour", "day")
REQUEST_LOG_COLUMNS = (
    "id",
    "account_id",
    "key_id",
    "model",
    "provider",
    "deployment",
    "region",
    "status",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cost",
    "latency_ms",
    "ttft_ms",
    "upstream_request_id",
    "error_message",
    "created_at",  # last: the backends convert it on its own
)
# Summed columns of usage_rollups, in table order.
ROLLUP_SUMS = (
    "requests",
    "errors",
    "client_closed",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "cost",
    "latency_ms_sum",
    "ttft_ms_sum",
    "ttft_count",
)
# Latency histogram bins: bin b holds latencies in (upper(b - 1), upper(b)] milliseconds, where
# upper(b) = ceil(1.1 ** b); a percentile read off the histogram is within 10% above the truth.
LATENCY_GROWTH = 1.1


def latency_bin_upper(bin_: int) -> int:
    return math.ceil(LATENCY_GROWTH**bin_)


def latency_bin(latency_ms: int) -> int:
    """The lowest bin whose upper bound is at least ``latency_ms``."""
    if latency_ms <= 1:
        return 0
    bin_ = math.ceil(math.log(latency_ms) / math.log(LATENCY_GROWTH))
    while latency_bin_upper(bin_) < latency_ms:  # float rounding, either way
        bin_ += 1
    while bin_ > 0 and latency_bin_upper(bin_ - 1) >= latency_ms:
        bin_ -= 1
    return bin_


def bucket_start(moment: dt.datetime, granularity: str) -> dt.datetime:
    """The UTC hour or day ``moment`` falls in."""
    utc = require_aware(moment, "created_at").astimezone(dt.UTC)
    if granularity == "hour":
        return utc.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        return utc.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def rollup_deltas(logs: Sequence[RequestLog]) -> list[tuple[str, str, RollupRow]]:
    """What ``logs`` add to the rollups: (account_id, granularity, row) per bucket, model and
    key."""
    rows: dict[tuple[str, str, dt.datetime, str, str], dict[str, Any]] = {}
    for log in logs:
        for granularity in GRANULARITIES:
            key = (log.account_id, granularity, bucket_start(log.created_at, granularity), log.model, log.key_id)
            row = rows.get(key)
            if row is None:
                row = rows[key] = dict.fromkeys(ROLLUP_SUMS, 0) | {"latency_bins": {}}
            row["requests"] += 1
            row["errors"] += log.status not in ("ok", "client_closed")
            row["client_closed"] += log.status == "client_closed"
            row["prompt_tokens"] += log.prompt_tokens
            row["completion_tokens"] += log.completion_tokens
            row["reasoning_tokens"] += log.reasoning_tokens
            row["cached_tokens"] += log.cached_tokens
            row["cost"] += log.cost
            row["latency_ms_sum"] += log.latency_ms
            if log.ttft_ms is not None:  # None: no answer came (an error, a client that left)
                row["ttft_ms_sum"] += log.ttft_ms
                row["ttft_count"] += 1
            bins = row["latency_bins"]
            bin_ = latency_bin(log.latency_ms)
            bins[bin_] = bins.get(bin_, 0) + 1
    return [
        (account_id, granularity, RollupRow(bucket_start=start, model=model, key_id=key_id, **row))
        for (account_id, granularity, start, model, key_id), row in rows.items()
    ]


def merge_rollup_rows(rows: Sequence[Mapping[str, Any]], bins: Sequence[Mapping[str, Any]]) -> list[RollupRow]:
    """Rollup rows (with ``bucket_start``, ``model``, ``key_id`` and the sums) and their
    histogram rows (the same three, ``bin``, ``count``) as records, in the order of ``rows``."""
    histograms: dict[tuple[Any, str, str], dict[int, int]] = {}
    for b in bins:
        histograms.setdefault((b["bucket_start"], b["model"], b["key_id"]), {})[b["bin"]] = b["count"]
    return [
        RollupRow(
            bucket_start=r["bucket_start"],
            model=r["model"],
            key_id=r["key_id"],
            latency_bins=histograms.get((r["bucket_start"], r["model"], r["key_id"]), {}),
            **{name: r[name] for name in ROLLUP_SUMS},
        )
        for r in rows
    ]


def request_log_where(
    query: RequestLogFilter, placeholder: Callable[[int], str], time: Callable[[dt.datetime], Any]
) -> tuple[str, list[Any]]:
    """The WHERE clause (newest-first cursor included) and its parameters for a listing."""
    params: list[Any] = [query.account_id]
    clauses = ["account_id = " + placeholder(1)]

    def add(sql: str, *values: Any) -> None:
        names = []
        for value in values:
            params.append(value)
            names.append(placeholder(len(params)))
        clauses.append(sql.format(*names))

    if query.model is not None:
        add("model = {0}", query.model)
    if query.key_id is not None:
        add("key_id = {0}", query.key_id)
    if query.status is not None:
        add("status = {0}", query.status)
    if query.stream is not None:
        add("stream = {0}", query.stream)
    if query.since is not None:
        add("created_at >= {0}", time(query.since))
    if query.until is not None:
        add("created_at < {0}", time(query.until))
    if query.before is not None:
        at, request_id = query.before
        add("(created_at < {0} OR (created_at = {1} AND id < {2}))", time(at), time(at), request_id)
    return " AND ".join(clauses), params


# The holds columns interrupted_log reads.
PENDING_HOLD_COLUMNS = "id, account_id, request_id, key_id, model, provider, stream, created_at"


def interrupted_log(hold: Mapping[str, Any], now: dt.datetime) -> RequestLog:
    """The log of a request whose process died holding ``hold`` (a holds row): nothing
    charged, no tokens known, latency up to the recovery."""
    created = hold["created_at"]
    return RequestLog(
        id=hold["request_id"],
        account_id=hold["account_id"],
        key_id=hold["key_id"] or "",
        model=hold["model"] or "",
        provider=hold["provider"] or "",
        deployment=None,
        region=None,
        status="interrupted",
        stream=bool(hold["stream"]),
        prompt_tokens=0,
        completion_tokens=0,
        reasoning_tokens=0,
        cached_tokens=0,
        cost=0,
        latency_ms=max(0, round((now - created).total_seconds() * 1000)),
        ttft_ms=None,
        created_at=created,
    )


# -- a request log kept with its hold -----------------------------------------------------------

# What holds.log keeps of a request's log: every column but its cost (the hold's charge is
# the cost) and what the hold row has already (request id, account, key, model, stream).
_HELD_LOG_FIELDS = (
    "provider",
    "deployment",
    "region",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "latency_ms",
    "ttft_ms",
    "upstream_request_id",
    "error_message",
)


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per call


def log_to_json(log: RequestLog) -> str:
    """The part of ``log`` a hold keeps until the log is written (see migration 0007)."""
    fields = {name: getattr(log, name) for name in _HELD_LOG_FIELDS}
    fields["created_at"] = require_aware(log.created_at, "created_at").isoformat()
    return _encode(fields)


# The holds columns log_from_hold reads (and the hold's id, to clear its copy).
UNLOGGED_HOLD_COLUMNS = "id, request_id, account_id, key_id, model, stream, charged, log"


def log_from_hold(hold: Mapping[str, Any]) -> RequestLog:
    """The request log a finalized ``hold`` (a holds row with its ``log``) stands for: its
    cost is what the hold charged."""
    log = hold["log"]
    fields = json.loads(log) if isinstance(log, str) else dict(log)
    fields.setdefault("upstream_request_id", None)  # a copy kept before migration 0009 has none
    fields.setdefault("error_message", None)  # nor one kept before migration 0015
    return RequestLog(
        id=hold["request_id"],
        account_id=hold["account_id"],
        key_id=hold["key_id"] or "",
        model=hold["model"] or "",
        stream=bool(hold["stream"]),
        cost=hold["charged"],
        created_at=dt.datetime.fromisoformat(fields.pop("created_at")),
        **{name: fields[name] for name in _HELD_LOG_FIELDS},
    )


# -- SQL both dialects read alike --------------------------------------------------------------

KEY_COLUMNS = (
    "id, account_id, prefix, rpm, tpm, created_at, revoked_at, signature_required,"
    " signing_secret_enc, previous_secret_enc, previous_secret_expires_at"
)
# A dashboard session's key; each backend adds its WHERE (a session by id, not expired).
SESSION_KEY_SELECT = (
    "SELECT "
    + ", ".join(f"k.{c.strip()}" for c in KEY_COLUMNS.split(","))
    + " FROM dashboard_sessions AS s JOIN api_keys AS k ON k.id = s.key_id"
)


@attrs.frozen(kw_only=True)
class StoredItemRow:
    """A row of :data:`STORED_ITEM_SELECT`: an item's id and the stored response it is part of."""

    item_id: str
    id: str
    account_id: str
    key_id: str
    model: str
    deployment: str
    endpoint: str
    context_tokens: int
    output_tokens: int
    created_at: dt.datetime

    def response(self) -> StoredResponse:
        fields = attrs.asdict(self, recurse=False)
        del fields["item_id"]
        return StoredResponse(**fields)


STORED_RESPONSE_COLUMNS = (
    "r.id, r.account_id, r.key_id, r.model, r.deployment, r.endpoint, r.context_tokens, r.output_tokens, r.created_at"
)
STORED_RESPONSE_SELECT = f"SELECT {STORED_RESPONSE_COLUMNS} FROM stored_responses AS r"
# The stored responses that own the given items, with each item's id first.
STORED_ITEM_SELECT = (
    f"SELECT i.id AS item_id, {STORED_RESPONSE_COLUMNS} FROM stored_response_items AS i"
    " JOIN stored_responses AS r ON r.id = i.response_id"
)
LEDGER_SELECT = (
    "SELECT id, account_id, type, amount, balance_after, locked_after, request_id, hold_id, created_at FROM ledger"
)
REQUEST_LOG_SELECT = f"SELECT {', '.join(REQUEST_LOG_COLUMNS)} FROM request_logs"
ROLLUP_SELECT = f"SELECT bucket_start, model, key_id, {', '.join(ROLLUP_SUMS)} FROM usage_rollups"
ROLLUP_LATENCY_SELECT = "SELECT bucket_start, model, key_id, bin, count FROM usage_rollup_latency"
# The columns that name a rollup row (and its histogram's rows, with their bin).
ROLLUP_KEY = ("account_id", "granularity", "bucket_start", "model", "key_id")


def public_caller(depth: int = 2) -> str:
    """The name of the nearest public method above a backend's seam (``depth`` frames up
    is the seam's caller; private helpers between are skipped), for the call's metrics."""
    frame = sys._getframe(depth)
    for _ in range(4):
        name = frame.f_code.co_name
        if not name.startswith("_") or frame.f_back is None:
            return name
        frame = frame.f_back
    return frame.f_code.co_name
