"""What a developer may read and do with their own money and usage: top-up, transactions,
request logs and rollups. Every method is scoped to one account; a row of another account is
"not found", never "forbidden", so ids cannot be probed.

Pages are newest first with a cursor (``after``: the last id of the previous page). Ledger
ids only grow, so a page never repeats or skips a row when new ones arrive; request logs are
ordered by (created_at, id) and a log is written once, so the same holds for them.

Rollups are read, never recomputed here: the usage aggregator adds each request to its
hourly and daily rows in the transaction that writes the request's log (see
:meth:`storage.Storage.insert_request_logs`). Buckets are UTC hours and days.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Generic, TypeVar

import attrs

from omixa.engine.config import WalletConfig
from omixa.engine.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    NotFoundError,
    TopUpDisabled,
    storage_failures,
)
from omixa.engine.money import format_usd, parse_usd
from omixa.storage import (
    IdempotencyConflict,
    LedgerEntry,
    NotFound,
    RequestLog,
    RequestLogFilter,
    RollupRow,
    Storage,
    TopUpResult,
    bucket_start,
    latency_bin_upper,
)

T = TypeVar("T")

MAX_PAGE = 100
DEFAULT_PAGE = 20
MAX_IDEMPOTENCY_KEY = 255
# The widest range one rollup query may cover, and the default one, per granularity.
MAX_SPAN = {"hour": dt.timedelta(days=31), "day": dt.timedelta(days=366)}
DEFAULT_SPAN = {"hour": dt.timedelta(hours=24), "day": dt.timedelta(days=30)}
STEP = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}


@attrs.frozen(kw_only=True)
class Page(Generic[T]):
    data: Sequence[T]
    has_more: bool


@attrs.frozen(kw_only=True)
class Bucket:
    """One hour or day of usage, over every model or one (``model`` None: all of them)."""

    start: dt.datetime
    model: str | None
    requests: int
    errors: int
    client_closed: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cost: int
    latency_ms_mean: float | None
    # Upper bound of the histogram bin holding the 95th percentile: at most 10% above it.
    latency_ms_p95: int | None


def page_limit(value: int | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not 1 <= value <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
    return value


def summarize(rows: Sequence[RollupRow], *, by_model: bool) -> list[Bucket]:
    """Rollup rows (one per bucket and model) merged into buckets, per model or overall."""
    merged: dict[tuple[dt.datetime, str | None], list[RollupRow]] = {}
    for row in rows:
        merged.setdefault((row.bucket_start, row.model if by_model else None), []).append(row)
    buckets = []
    for (start, model), group in sorted(merged.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        requests = sum(r.requests for r in group)
        histogram: dict[int, int] = {}
        for r in group:
            for bin_, count in r.latency_bins.items():
                histogram[bin_] = histogram.get(bin_, 0) + count
        buckets.append(
            Bucket(
                start=start,
                model=model,
                requests=requests,
                errors=sum(r.errors for r in group),
                client_closed=sum(r.client_closed for r in group),
                prompt_tokens=sum(r.prompt_tokens for r in group),
                completion_tokens=sum(r.completion_tokens for r in group),
                reasoning_tokens=sum(r.reasoning_tokens for r in group),
                cached_tokens=sum(r.cached_tokens for r in group),
                cost=sum(r.cost for r in group),
                latency_ms_mean=round(sum(r.latency_ms_sum for r in group) / requests, 1) if requests else None,
                latency_ms_p95=_percentile(histogram, 0.95),
            )
        )
    return buckets


def _percentile(histogram: dict[int, int], q: float) -> int | None:
    total = sum(histogram.values())
    if not total:
        return None
    rank = q * total  # the smallest bin whose cumulative count reaches the rank
    seen = 0
    for bin_ in sorted(histogram):
        seen += histogram[bin_]
        if seen >= rank:
            return latency_bin_upper(bin_)
    return latency_bin_upper(max(histogram))


class Reports:
    def __init__(self, storage: Storage, wallet: WalletConfig) -> None:
        self._storage = storage
        self._wallet = wallet

    async def top_up(self, account_id: str, amount: object, idempotency_key: str | None) -> TopUpResult:
        """Credit the caller's own wallet, once per Idempotency-Key.

        Errors: TopUpDisabled; InvalidRequest (amount, key); IdempotencyKeyReused;
        ServiceUnavailable.
        """
        if not self._wallet.self_top_up:
            raise TopUpDisabled()
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters.")
        if not isinstance(amount, (str, int, float)) or isinstance(amount, bool):
            raise InvalidRequest('amount is required: a decimal string of USD such as "10.00".', param="amount")
        try:
            nano = parse_usd(amount, field="amount")
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="amount") from None
        low = parse_usd(self._wallet.top_up_min_usd)
        high = parse_usd(self._wallet.top_up_max_usd)
        if not low <= nano <= high:
            raise InvalidRequest(
                f"amount must be between {format_usd(low)} and {format_usd(high)} USD.", param="amount"
            )
        with storage_failures("usage"):
            try:
                return await self._storage.credit_top_up(
                    account_id, nano, idempotency_key=idempotency_key, note="self top-up (API)"
                )
            except IdempotencyConflict:
                raise IdempotencyKeyReused() from None
            except NotFound:
                raise NotFoundError("No such account.") from None

    async def transactions(self, account_id: str, *, limit: int, after: int | None) -> Page[LedgerEntry]:
        with storage_failures("usage"):
            if after is not None and await self._storage.get_ledger_entry(account_id, after) is None:
                raise NotFoundError("No such transaction for 'after'.")
            rows = await self._storage.list_ledger(account_id, limit=limit + 1, before_id=after)
        return Page(data=rows[:limit], has_more=len(rows) > limit)

    async def transaction(self, account_id: str, entry_id: int) -> LedgerEntry:
        with storage_failures("usage"):
            entry = await self._storage.get_ledger_entry(account_id, entry_id)
        if entry is None:
            raise NotFoundError("No such transaction.")
        return entry

    async def request(self, account_id: str, request_id: str) -> RequestLog:
        with storage_failures("usage"):
            log = await self._storage.get_request_log(request_id)
        if log is None or log.account_id != account_id:
            raise NotFoundError("No such request.")
        return log

    async def requests(self, query: RequestLogFilter, *, after: str | None) -> Page[RequestLog]:
        if after is not None:
            cursor = await self.request(query.account_id, after)
            query = attrs.evolve(query, before=(cursor.created_at, cursor.id))
        with storage_failures("usage"):
            rows = await self._storage.list_request_logs(attrs.evolve(query, limit=query.limit + 1))
        return Page(data=rows[: query.limit], has_more=len(rows) > query.limit)

    async def rollups(
        self,
        account_id: str,
        *,
        granularity: str,
        since: dt.datetime | None,
        until: dt.datetime | None,
        model: str | None,
        by_model: bool,
    ) -> tuple[dt.datetime, dt.datetime, list[Bucket]]:
        """Buckets with data whose start is in [since, until), oldest first; both bounds are
        rounded down to their bucket.

        Defaults: until = the end of the current bucket; since = 24 hours (hour) or 30 days
        (day) before it. Errors: InvalidRequest for a bad granularity or range.
        """
        if granularity not in STEP:
            raise InvalidRequest("granularity must be 'hour' or 'day'.", param="granularity")
        if until is None:
            until = bucket_start(dt.datetime.now(dt.UTC), granularity) + STEP[granularity]
        until = bucket_start(until, granularity)
        since = until - DEFAULT_SPAN[granularity] if since is None else bucket_start(since, granularity)
        if since >= until:
            raise InvalidRequest("'since' must be before 'until'.", param="since")
        if until - since > MAX_SPAN[granularity]:
            raise InvalidRequest(f"At most {MAX_SPAN[granularity].days} days per query at granularity={granularity}.")
        with storage_failures("usage"):
            rows = await self._storage.usage_rollups(
                account_id, granularity=granularity, since=since, until=until, model=model
            )
        return since, until, summarize(rows, by_model=by_model)
