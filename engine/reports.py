"""What a developer may read and do with their own money and usage: top-up, transactions,
request logs and rollups. Every method is scoped to one account; a row of another account is
"not found", never "forbidden", so ids cannot be probed.

Pages are newest first with a cursor (``after``: the last id of the previous page). Ledger
ids only grow, so a page never repeats or skips a row when new ones arrive; request logs are
ordered by (created_at, id) and a log is written once, so the same holds for them.

Rollups are read, never recomputed here: the usage aggregator adds each request to its
hourly and daily rows (one per model and key) in the transaction that writes the request's
log (see :meth:`storage.Storage.insert_request_logs`). Buckets are UTC hours and days.

Both lists filter by model and by key; a key id of another account matches nothing, as any
filter does outside the caller's own rows. The exports (``*_export``) read the same rows a
part at a time for a streamed answer: the first part is read before they return, so a bad
cursor or an unavailable store is an error before the first byte; each later part is read
when the previous one has been taken, so no more than one part is held at a time.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Sequence
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
# An exported part: request logs per storage query, and buckets (of every model and key) per
# rollup query.
EXPORT_PAGE = 500
EXPORT_BUCKETS = 24
# The shape of every API key id (storage: new_id("key")); a filter of another shape is refused.
KEY_ID = re.compile(r"key_[0-9a-f]{24}")
GROUP_BY = ("model", "key")


@attrs.frozen(kw_only=True)
class Page(Generic[T]):
    data: Sequence[T]
    has_more: bool


@attrs.frozen(kw_only=True)
class Bucket:
    """One hour or day of usage: of one model (grouped by model), of one key (grouped by key),
    or of every model and key together (``model`` and ``key_id`` None when not grouped by
    them)."""

    start: dt.datetime
    model: str | None
    key_id: str | None
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
    # The median, read off the same histogram (so at most 10% above the true one).
    latency_ms_p50: int | None = None
    # Mean time to first token of the requests that have one (that got an answer), or None.
    ttft_ms_mean: float | None = None


@attrs.frozen(kw_only=True)
class RollupSummary:
    """A range's rollups grouped every way the usage page shows them (see
    :meth:`Reports.rollup_summary`); ``total`` is None when the range has no requests."""

    since: dt.datetime
    until: dt.datetime
    buckets: list[Bucket]
    buckets_by_model: list[Bucket]
    total: Bucket | None
    by_model: list[Bucket]
    by_key: list[Bucket]


@attrs.frozen(kw_only=True)
class BalancePoint:
    """The balance (nano-USD) at the end of the bucket that begins at ``start``."""

    start: dt.datetime
    balance: int


def page_limit(value: int | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not 1 <= value <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
    return value


def check_filters(*, model: str | None, key_id: str | None) -> None:
    """Errors: InvalidRequest for an empty model or a key id not shaped like one."""
    if model is not None and not model:
        raise InvalidRequest("model must not be empty.", param="model")
    if key_id is not None and not KEY_ID.fullmatch(key_id):
        raise InvalidRequest("key_id must be an API key id: key_ followed by 24 hex digits.", param="key_id")


def summarize(rows: Sequence[RollupRow], *, group_by: str | None) -> list[Bucket]:
    """Rollup rows (one per bucket, model and key) merged into buckets: per model, per key,
    or overall (``group_by`` None); oldest first, then by model or key."""
    merged: dict[tuple[dt.datetime, str | None, str | None], list[RollupRow]] = {}
    for row in rows:
        model = row.model if group_by == "model" else None
        key_id = row.key_id if group_by == "key" else None
        merged.setdefault((row.bucket_start, model, key_id), []).append(row)
    buckets = []
    for (start, model, key_id), group in sorted(
        merged.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2] or "")
    ):
        requests = sum(r.requests for r in group)
        ttft_count = sum(r.ttft_count for r in group)
        histogram: dict[int, int] = {}
        for r in group:
            for bin_, count in r.latency_bins.items():
                histogram[bin_] = histogram.get(bin_, 0) + count
        buckets.append(
            Bucket(
                start=start,
                model=model,
                key_id=key_id,
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
                latency_ms_p50=_percentile(histogram, 0.5),
                ttft_ms_mean=round(sum(r.ttft_ms_sum for r in group) / ttft_count, 1) if ttft_count else None,
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

    async def request_ledger(self, account_id: str, request_id: str) -> Sequence[LedgerEntry]:
        """The wallet movements of one of the account's requests (its hold, then the charge
        and release of its settlement, or the release of a void), oldest first.
        Errors: NotFoundError (no such log of the account), ServiceUnavailable."""
        await self.request(account_id, request_id)
        with storage_failures("usage"):
            return await self._storage.request_ledger(account_id, request_id)

    async def balance_history(
        self, account_id: str, *, granularity: str, since: dt.datetime | None, until: dt.datetime | None
    ) -> tuple[dt.datetime, dt.datetime, list[BalancePoint]]:
        """The balance at the end of each bucket in [since, until) (range and defaults as
        :meth:`rollups`), from the ledger rows' ``balance_after``: the last row up to the
        bucket's end. Before the account's first row the balance is 0.
        Errors: InvalidRequest (granularity, range), ServiceUnavailable."""
        since, until = _checked_range(granularity, since, until, model=None, key_id=None, group_by=None)
        step = STEP[granularity]
        with storage_failures("usage"):
            rows = await self._storage.ledger_balances(
                account_id, since=since, until=until, step_seconds=int(step.total_seconds())
            )
        points, balance, index = [], 0, 0
        start = since
        while start < until:
            while index < len(rows) and rows[index].created_at < start + step:
                balance = rows[index].balance_after
                index += 1
            points.append(BalancePoint(start=start, balance=balance))
            start += step
        return since, until, points

    async def request(self, account_id: str, request_id: str) -> RequestLog:
        with storage_failures("usage"):
            log = await self._storage.get_request_log(request_id)
        if log is None or log.account_id != account_id:
            raise NotFoundError("No such request.")
        return log

    async def requests(self, query: RequestLogFilter, *, after: str | None) -> Page[RequestLog]:
        """A page of the account's logs matching ``query``, newest first, after the log
        ``after``. Errors: InvalidRequest (a filter), NotFoundError (``after`` is not one of
        the account's logs), ServiceUnavailable."""
        check_filters(model=query.model, key_id=query.key_id)
        if after is not None:
            cursor = await self.request(query.account_id, after)
            query = attrs.evolve(query, before=(cursor.created_at, cursor.id))
        with storage_failures("usage"):
            rows = await self._storage.list_request_logs(attrs.evolve(query, limit=query.limit + 1))
        return Page(data=rows[: query.limit], has_more=len(rows) > query.limit)

    async def requests_export(
        self, query: RequestLogFilter, *, after: str | None
    ) -> AsyncIterator[Sequence[RequestLog]]:
        """Every log :meth:`requests` would page through (``query.limit`` is ignored), newest
        first, :data:`EXPORT_PAGE` at a time. The first part is read now (the errors of
        :meth:`requests` come from here); each next one when the previous has been taken."""
        first = await self.requests(attrs.evolve(query, limit=EXPORT_PAGE), after=after)
        return self._request_parts(attrs.evolve(query, limit=EXPORT_PAGE), first)

    async def _request_parts(
        self, query: RequestLogFilter, page: Page[RequestLog]
    ) -> AsyncIterator[Sequence[RequestLog]]:
        while True:
            yield page.data
            if not page.has_more:
                return
            last = page.data[-1]
            with storage_failures("usage"):
                rows = await self._storage.list_request_logs(
                    attrs.evolve(query, before=(last.created_at, last.id), limit=query.limit + 1)
                )
            page = Page(data=rows[: query.limit], has_more=len(rows) > query.limit)

    async def rollups(
        self,
        account_id: str,
        *,
        granularity: str,
        since: dt.datetime | None,
        until: dt.datetime | None,
        model: str | None = None,
        key_id: str | None = None,
        group_by: str | None = None,
    ) -> tuple[dt.datetime, dt.datetime, list[Bucket]]:
        """Buckets with data whose start is in [since, until), oldest first, of ``model`` and
        of ``key_id`` when given, grouped by ``group_by`` (``model``, ``key``, or None: every
        model and key together); both bounds are rounded down to their bucket.

        Defaults: until = the end of the current bucket; since = 24 hours (hour) or 30 days
        (day) before it. Errors: InvalidRequest for a bad granularity, range, filter or
        grouping; ServiceUnavailable.
        """
        since, until = _checked_range(granularity, since, until, model=model, key_id=key_id, group_by=group_by)
        rows = await self._rollup_rows(account_id, granularity, since, until, model, key_id)
        return since, until, summarize(rows, group_by=group_by)

    async def rollup_summary(
        self,
        account_id: str,
        *,
        granularity: str,
        since: dt.datetime | None,
        until: dt.datetime | None,
        model: str | None = None,
        key_id: str | None = None,
    ) -> RollupSummary:
        """What :meth:`rollups` answers for the same arguments (range, errors), grouped every
        way at once from one read: per bucket, per bucket and model, and over the whole range
        (overall, per model, per key; their ``start`` is the range's)."""
        since, until = _checked_range(granularity, since, until, model=model, key_id=key_id, group_by=None)
        rows = await self._rollup_rows(account_id, granularity, since, until, model, key_id)
        ranged = [attrs.evolve(r, bucket_start=since) for r in rows]  # one bucket: the range
        whole = summarize(ranged, group_by=None)
        return RollupSummary(
            since=since,
            until=until,
            buckets=summarize(rows, group_by=None),
            buckets_by_model=summarize(rows, group_by="model"),
            total=whole[0] if whole else None,
            by_model=summarize(ranged, group_by="model"),
            by_key=summarize(ranged, group_by="key"),
        )

    async def rollups_export(
        self,
        account_id: str,
        *,
        granularity: str,
        since: dt.datetime | None,
        until: dt.datetime | None,
        model: str | None = None,
        key_id: str | None = None,
        group_by: str | None = None,
    ) -> tuple[dt.datetime, dt.datetime, AsyncIterator[list[Bucket]]]:
        """The buckets of :meth:`rollups` (same arguments, errors and range), read
        :data:`EXPORT_BUCKETS` buckets of time at a time; the first part is read now."""
        since, until = _checked_range(granularity, since, until, model=model, key_id=key_id, group_by=group_by)
        width = STEP[granularity] * EXPORT_BUCKETS
        end = min(since + width, until)
        first = await self._rollup_rows(account_id, granularity, since, end, model, key_id)

        async def parts() -> AsyncIterator[list[Bucket]]:
            rows, start = first, since
            while True:
                yield summarize(rows, group_by=group_by)
                start = start + width
                if start >= until:
                    return
                rows = await self._rollup_rows(account_id, granularity, start, min(start + width, until), model, key_id)

        return since, until, parts()

    async def _rollup_rows(
        self,
        account_id: str,
        granularity: str,
        since: dt.datetime,
        until: dt.datetime,
        model: str | None,
        key_id: str | None,
    ) -> Sequence[RollupRow]:
        with storage_failures("usage"):
            return await self._storage.usage_rollups(
                account_id, granularity=granularity, since=since, until=until, model=model, key_id=key_id
            )


def _checked_range(
    granularity: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    *,
    model: str | None,
    key_id: str | None,
    group_by: str | None,
) -> tuple[dt.datetime, dt.datetime]:
    """The rollup query's range, its bounds rounded down to their bucket, once its arguments
    are checked. Errors: InvalidRequest."""
    if granularity not in STEP:
        raise InvalidRequest("granularity must be 'hour' or 'day'.", param="granularity")
    if group_by is not None and group_by not in GROUP_BY:
        raise InvalidRequest(
            "group_by must be 'model' or 'key' (or absent: every model and key together).", param="group_by"
        )
    check_filters(model=model, key_id=key_id)
    if until is None:
        until = bucket_start(dt.datetime.now(dt.UTC), granularity) + STEP[granularity]
    until = bucket_start(until, granularity)
    since = until - DEFAULT_SPAN[granularity] if since is None else bucket_start(since, granularity)
    if since >= until:
        raise InvalidRequest("'since' must be before 'until'.", param="since")
    if until - since > MAX_SPAN[granularity]:
        raise InvalidRequest(f"At most {MAX_SPAN[granularity].days} days per query at granularity={granularity}.")
    return since, until
