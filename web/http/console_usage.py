"""The /usage page and its feeds: everything the page shows, for a range and filters, in one
poll (``GET /usage/data``); one request's log (``/usage/data/requests/<id>``, which the
playground reads too); and the rollups as CSV (``/usage/data/rollups.csv``).

The feed is built on the engine calls of ``GET /api/v1/usage/rollups`` and
``/api/v1/usage/requests`` (``Reports.rollup_summary`` reads the same rollup rows and sums them
with the same ``summarize``), and renders buckets and logs with the API's own views, so the
page shows the API's numbers exactly. The CSV route streams the very bytes the API's
``format=csv`` answer streams for the same arguments. Every route needs the dashboard session
(401 without it) and answers errors in the API's envelope.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from omixa.engine.errors import InvalidRequest
from omixa.engine.money import format_usd
from omixa.engine.reports import STEP, Bucket
from omixa.storage import ApiKeyRecord, RequestLogFilter
from omixa.web.http import usage_export
from omixa.web.http.console import Console
from omixa.web.http.envelope import json_response
from omixa.web.http.wallet_api import bucket_view, iso, parse_time, query_params, request_view

LATEST_REQUESTS = 10
FEED_PARAMS = ("granularity", "since", "until", "model", "key_id")


def register(app: QuartTrio, console: Console) -> None:
    engine = console.engine
    reports = engine.reports

    @app.get("/usage")
    async def usage_page() -> Response:
        return await console.signed_in_page("usage.html", "usage")

    @app.get("/usage/data")
    async def usage_data() -> Response:
        """The page's numbers for ``since``..``until`` (ISO 8601; defaults as the API's) in
        ``granularity`` buckets, of ``model`` and ``key_id`` when given."""
        key, _ = await console.require()
        params = query_params(FEED_PARAMS)
        granularity = params.get("granularity", "hour")
        since, until = _times(params)
        model = params.get("model")
        keys = await engine.accounts.keys(key.account_id)
        key_id = _own_key(params.get("key_id"), keys)
        summary = await reports.rollup_summary(
            key.account_id, granularity=granularity, since=since, until=until, model=model, key_id=key_id
        )
        latest = await reports.requests(
            RequestLogFilter(
                account_id=key.account_id,
                limit=LATEST_REQUESTS,
                model=model,
                key_id=key_id,
                since=summary.since,
                until=summary.until,
            ),
            after=None,
        )
        wallet = await engine.accounts.wallet(key.account_id)
        step = STEP[granularity]
        prefixes = {k.id: k.prefix for k in keys}
        # The filter offers the enabled models, those with usage in the range, and the chosen one.
        offered = set(engine.router.models()) | {b.model for b in summary.by_model if b.model}
        if model is not None:
            offered.add(model)
        return json_response(
            {
                "wallet": {
                    "balance": format_usd(wallet.balance),
                    "locked_balance": format_usd(wallet.locked),
                    "available": format_usd(wallet.available),
                    "currency": "USD",
                },
                "granularity": granularity,
                "since": iso(summary.since),
                "until": iso(summary.until),
                "filters": {"model": model, "key_id": key_id},
                "buckets": [_bucket(b, step) for b in summary.buckets],
                "buckets_by_model": [_bucket(b, step) for b in summary.buckets_by_model],
                "totals": _totals(summary.total),
                "models": [{"model": b.model, **_totals(b)} for b in _busiest(summary.by_model)],
                "keys": [
                    {"key_id": b.key_id, "prefix": prefixes.get(b.key_id or "", ""), **_totals(b)}
                    for b in _busiest(summary.by_key)
                ],
                "key_options": [{"id": k.id, "prefix": k.prefix, "revoked": k.revoked_at is not None} for k in keys],
                "model_options": sorted(offered),
                "latest": [{**request_view(r), "key_prefix": prefixes.get(r.key_id, "")} for r in latest.data],
            }
        )

    @app.get("/usage/data/rollups.csv")
    async def usage_rollups_csv() -> Response:
        """The rollups of the range and filters as ``GET /api/v1/usage/rollups?format=csv``
        streams them for the same arguments (``group_by`` too)."""
        key, _ = await console.require()
        params = query_params((*FEED_PARAMS, "group_by"))
        granularity = params.get("granularity", "hour")
        since, until = _times(params)
        group_by = params.get("group_by")
        key_id = _own_key(params.get("key_id"), await engine.accounts.keys(key.account_id))

        def render(bucket: Bucket) -> dict[str, Any]:
            return bucket_view(bucket, STEP[granularity])

        since, until, parts = await reports.rollups_export(
            key.account_id,
            granularity=granularity,
            since=since,
            until=until,
            model=params.get("model"),
            key_id=key_id,
            group_by=group_by,
        )
        columns = usage_export.bucket_columns(render, by_key=group_by == "key")
        name = usage_export.file_name(f"rollups-{granularity}", since, until)
        return usage_export.csv_response(columns, parts, render, name)

    @app.get("/usage/data/requests/<request_id>")
    async def usage_data_request(request_id: str) -> Response:
        key, _ = await console.require()
        return json_response(request_view(await reports.request(key.account_id, request_id)))


def _times(params: dict[str, str]) -> tuple[dt.datetime | None, dt.datetime | None]:
    since = parse_time("since", params["since"]) if "since" in params else None
    until = parse_time("until", params["until"]) if "until" in params else None
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("'since' must be before 'until'.", param="since")
    return since, until


def _own_key(key_id: str | None, keys: Sequence[ApiKeyRecord]) -> str | None:
    """``key_id`` if it is one of the account's keys (revoked ones too). Errors:
    InvalidRequest naming the parameter otherwise."""
    if key_id is None or any(k.id == key_id for k in keys):
        return key_id
    raise InvalidRequest(f"key_id {key_id!r} is not one of this account's keys.", param="key_id")


def _bucket(bucket: Bucket, step: dt.timedelta) -> dict[str, Any]:
    """The API's bucket, with the median latency and the mean time to first token."""
    return {**bucket_view(bucket, step), "latency_ms_p50": bucket.latency_ms_p50, "ttft_ms_mean": bucket.ttft_ms_mean}


def _busiest(buckets: list[Bucket]) -> list[Bucket]:
    return sorted(buckets, key=lambda b: (-b.requests, b.model or "", b.key_id or ""))


def _totals(bucket: Bucket | None) -> dict[str, Any]:
    """A range's sums and latency figures (one bucket spanning it), zeros when it is empty."""
    if bucket is None:
        return {
            "requests": 0, "errors": 0, "error_rate": 0.0, "prompt_tokens": 0, "completion_tokens": 0,
            "reasoning_tokens": 0, "cached_tokens": 0, "total_tokens": 0, "cost": format_usd(0),
            "latency_ms_mean": None, "latency_ms_p50": None, "latency_ms_p95": None, "ttft_ms_mean": None,
        }  # fmt: skip
    return {
        "requests": bucket.requests,
        "errors": bucket.errors,
        "error_rate": round(bucket.errors / bucket.requests, 4) if bucket.requests else 0.0,
        "prompt_tokens": bucket.prompt_tokens,
        "completion_tokens": bucket.completion_tokens,
        "reasoning_tokens": bucket.reasoning_tokens,
        "cached_tokens": bucket.cached_tokens,
        "total_tokens": bucket.prompt_tokens + bucket.completion_tokens,
        "cost": format_usd(bucket.cost),
        "latency_ms_mean": bucket.latency_ms_mean,
        "latency_ms_p50": bucket.latency_ms_p50,
        "latency_ms_p95": bucket.latency_ms_p95,
        "ttft_ms_mean": bucket.ttft_ms_mean,
    }
