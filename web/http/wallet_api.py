"""The wallet and usage routes: top-up, transactions, request logs and rollups.

Money is rendered as exact decimal strings of USD (``"9.999850"`` style, never floats);
times as RFC 3339 UTC strings with milliseconds (``2026-11-25T22:16:13.123Z``). Lists use
OpenAI's shape: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``, newest
first, ``limit`` (1..100, default 20) and ``after`` (the last id of the previous page).
Unknown query parameters are refused, so a typo never silently widens a filter.

Both usage lists also answer CSV (``format=csv``, or ``Accept: text/csv`` without a
``format``), streamed: :mod:`web.http.usage_export`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from omixa.engine.errors import InvalidRequest, NotFoundError
from omixa.engine.money import format_usd
from omixa.engine.reports import STEP, Bucket, Page, page_limit
from omixa.engine.runtime import Engine
from omixa.storage import ApiKeyRecord, LedgerEntry, RequestLog, RequestLogFilter
from omixa.web.http import usage_export
from omixa.web.http.envelope import json_response

TXN_PREFIX = "txn_"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_FILTER_CHARS = 128


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Times a filter may name: from the Unix epoch to the start of year 9000, so that a range
# around one (a default span, a rounded bucket) stays a valid datetime.
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def parse_time(name: str, value: str) -> dt.datetime:
    """Unix seconds or RFC 3339 with a timezone, from 1970 to 9000. Errors: InvalidRequest."""
    try:
        if value.isascii() and value.isdigit():
            moment: dt.datetime | None = dt.datetime.fromtimestamp(int(value), dt.UTC)
        else:
            moment = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        moment = None
    if moment is None or moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidRequest(
            f"{name} must be Unix seconds or an RFC 3339 time with a timezone, e.g. 2026-11-25T10:00:00Z.",
            param=name,
        )
    if not EARLIEST <= moment < LATEST:
        raise InvalidRequest(f"{name} must be between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z.", param=name)
    return moment


def transaction_view(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": f"{TXN_PREFIX}{entry.id}",
        "object": "wallet.transaction",
        "type": entry.type,
        "amount": format_usd(entry.amount),
        "balance_after": format_usd(entry.balance_after),
        "locked_after": format_usd(entry.locked_after),
        "request_id": entry.request_id,
        "created_at": iso(entry.created_at),
    }


def request_view(log: RequestLog) -> dict[str, Any]:
    return {
        "id": log.id,
        "object": "usage.request",
        "model": log.model,
        "provider": log.provider,
        "region": log.region,
        "key_id": log.key_id,
        "status": log.status,
        "stream": log.stream,
        "prompt_tokens": log.prompt_tokens,
        "completion_tokens": log.completion_tokens,
        "reasoning_tokens": log.reasoning_tokens,
        "cached_tokens": log.cached_tokens,
        "total_tokens": log.prompt_tokens + log.completion_tokens,
        "cost": format_usd(log.cost),
        "latency_ms": log.latency_ms,
        "ttft_ms": log.ttft_ms,
        "upstream_request_id": log.upstream_request_id,
        "error_message": log.error_message,
        "created_at": iso(log.created_at),
    }


def bucket_view(bucket: Bucket, step: dt.timedelta) -> dict[str, Any]:
    # key_id only in buckets grouped by key, so the other answers keep their fields.
    key = {} if bucket.key_id is None else {"key_id": bucket.key_id}
    return {
        "object": "usage.bucket",
        "start": iso(bucket.start),
        "end": iso(bucket.start + step),
        "model": bucket.model,
        **key,
        "requests": bucket.requests,
        "errors": bucket.errors,
        "client_closed": bucket.client_closed,
        "prompt_tokens": bucket.prompt_tokens,
        "completion_tokens": bucket.completion_tokens,
        "reasoning_tokens": bucket.reasoning_tokens,
        "cached_tokens": bucket.cached_tokens,
        "total_tokens": bucket.prompt_tokens + bucket.completion_tokens,
        "cost": format_usd(bucket.cost),
        "latency_ms_mean": bucket.latency_ms_mean,
        "latency_ms_p95": bucket.latency_ms_p95,
    }


def list_view(page: Page[Any], render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    data = [render(item) for item in page.data]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


def query_params(allowed: Sequence[str]) -> dict[str, str]:
    """The query string as a dict. Errors: InvalidRequest for unknown or repeated names."""
    params: dict[str, str] = {}
    for name, values in request.args.lists():
        if name not in allowed:
            raise InvalidRequest(f"Unknown query parameter {name!r}; allowed: {', '.join(allowed)}.", param=name)
        if len(values) > 1:
            raise InvalidRequest(f"Query parameter {name!r} is given more than once.", param=name)
        if len(values[0]) > MAX_FILTER_CHARS:
            raise InvalidRequest(f"Query parameter {name!r} is too long.", param=name)
        params[name] = values[0]
    return params


FORMATS = ("json", "csv")
# What a usage list's answer depends on, beside its URL.
VARY = {"Vary": "Accept"}


def _wants_csv(params: dict[str, str]) -> bool:
    """``format`` if given, else the Accept header's choice between JSON (the default) and
    CSV. Errors: InvalidRequest for another format."""
    chosen = params.get("format")
    if chosen is None:
        return request.accept_mimetypes.best_match(("application/json", "text/csv")) == "text/csv"
    if chosen not in FORMATS:
        raise InvalidRequest("format must be 'json' or 'csv'.", param="format")
    return chosen == "csv"


def _times(params: dict[str, str]) -> tuple[dt.datetime | None, dt.datetime | None]:
    since = parse_time("since", params["since"]) if "since" in params else None
    until = parse_time("until", params["until"]) if "until" in params else None
    return since, until


def _limit(params: dict[str, str]) -> int:
    raw = params.get("limit")
    if raw is None:
        return page_limit(None)
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest("limit must be an integer.", param="limit")
    return page_limit(int(raw))


def _stream(params: dict[str, str]) -> bool | None:
    raw = params.get("stream")
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise InvalidRequest("stream must be 'true' or 'false'.", param="stream")
    return raw == "true"


# The filters of the request log, as query parameters (with limit, after and format).
REQUEST_FILTERS = ("model", "key_id", "status", "stream", "since", "until")


def request_filter(account_id: str, params: dict[str, str]) -> RequestLogFilter:
    """The request-log query that ``params`` (checked by :func:`query_params`) name.
    Errors: InvalidRequest."""
    since, until = _times(params)
    return RequestLogFilter(
        account_id=account_id,
        limit=_limit(params),
        model=params.get("model"),
        key_id=params.get("key_id"),
        status=params.get("status"),
        stream=_stream(params),
        since=since,
        until=until,
    )


async def requests_csv(engine: Engine, query: RequestLogFilter, after: str | None) -> Response:
    """The streamed CSV of every log ``query`` matches (after the log ``after``)."""
    begun = dt.datetime.now(dt.UTC)
    parts = await engine.reports.requests_export(query, after=after)
    # Without since, from the earliest time a filter can name; without until, to the moment
    # the export began (it lists nothing newer).
    name = usage_export.file_name("requests", query.since or EARLIEST, query.until or begun)
    return usage_export.csv_response(usage_export.request_columns(request_view), parts, request_view, name)


def _transaction_id(value: str) -> int:
    digits = value.removeprefix(TXN_PREFIX)
    if not value.startswith(TXN_PREFIX) or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise NotFoundError("No such transaction.")
    return int(digits)


def register(
    app: QuartTrio,
    engine: Engine,
    authenticate: Callable[[], Awaitable[ApiKeyRecord]],
    json_body: Callable[[], Awaitable[Any]],
) -> None:
    reports = engine.reports

    @app.post("/api/v1/wallet/top-up")
    async def wallet_top_up() -> Response:
        key = await authenticate()
        body = await json_body()
        if not isinstance(body, dict) or set(body) - {"amount"}:
            raise InvalidRequest('The body must be a JSON object {"amount": "10.00"} (USD).')
        result = await reports.top_up(key.account_id, body.get("amount"), request.headers.get(IDEMPOTENCY_HEADER))
        headers = {REPLAYED_HEADER: "true"} if result.replayed else None
        return json_response(
            {
                "object": "wallet.top_up",
                "amount": format_usd(result.entry.amount),
                "transaction": transaction_view(result.entry),
            },
            headers=headers,
        )

    @app.get("/api/v1/wallet/transactions")
    async def wallet_transactions() -> Response:
        key = await authenticate()
        params = query_params(("limit", "after"))
        after = _transaction_id(params["after"]) if "after" in params else None
        page = await reports.transactions(key.account_id, limit=_limit(params), after=after)
        return json_response(list_view(page, transaction_view))

    @app.get("/api/v1/wallet/transactions/<txn_id>")
    async def wallet_transaction(txn_id: str) -> Response:
        key = await authenticate()
        query_params(())
        return json_response(transaction_view(await reports.transaction(key.account_id, _transaction_id(txn_id))))

    @app.get("/api/v1/usage/requests")
    async def usage_requests() -> Response:
        key = await authenticate()
        params = query_params(("limit", "after", *REQUEST_FILTERS, "format"))
        as_csv = _wants_csv(params)
        query = request_filter(key.account_id, params)
        if as_csv:
            return await requests_csv(engine, query, params.get("after"))
        page = await reports.requests(query, after=params.get("after"))
        return json_response(list_view(page, request_view), headers=VARY)

    @app.get("/api/v1/usage/requests/<request_id>")
    async def usage_request(request_id: str) -> Response:
        key = await authenticate()
        query_params(())
        return json_response(request_view(await reports.request(key.account_id, request_id)))

    @app.get("/api/v1/usage/rollups")
    async def usage_rollups() -> Response:
        key = await authenticate()
        params = query_params(("granularity", "since", "until", "model", "key_id", "group_by", "format"))
        as_csv = _wants_csv(params)
        granularity = params.get("granularity", "hour")
        since, until = _times(params)
        group_by = params.get("group_by")
        filters = {"model": params.get("model"), "key_id": params.get("key_id"), "group_by": group_by}

        def render(bucket: Bucket) -> dict[str, Any]:
            return bucket_view(bucket, STEP[granularity])

        if as_csv:
            since, until, parts = await reports.rollups_export(
                key.account_id, granularity=granularity, since=since, until=until, **filters
            )
            columns = usage_export.bucket_columns(render, by_key=group_by == "key")
            name = usage_export.file_name(f"rollups-{granularity}", since, until)
            return usage_export.csv_response(columns, parts, render, name)
        since, until, buckets = await reports.rollups(
            key.account_id, granularity=granularity, since=since, until=until, **filters
        )
        return json_response(
            {
                "object": "list",
                "granularity": granularity,
                "since": iso(since),
                "until": iso(until),
                "data": [render(b) for b in buckets],
            },
            headers=VARY,
        )
