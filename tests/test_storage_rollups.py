"""Rollups by model and key, on both backends: every rollup row, filtered by model, key or
both, equals the sums over the request logs it stands for (counts, tokens, cost, latency and
the latency histogram, the time to first token's sum and count), through retried batches;
and migrations 0010, which added the key to the rollups, and 0013, which added the time to
first token, rebuild them from the logs of a database written before them."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterable
from typing import Any

import attrs
import pytest
from storage_helpers import raw, request_log

from omixa.storage import RequestLog, open_storage
from omixa.storage._common import REQUEST_LOG_COLUMNS, latency_bin
from omixa.storage.postgres import connection as postgres_connection
from omixa.storage.sqlite import connection as sqlite_connection

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 25, 22, 59, 59, 999_999, tzinfo=UTC)  # a microsecond before an hour ends
MODELS = ("gpt-4o", "gpt-4o-mini")
KEYS = ("key_a1", "key_a2", "")  # "": a request recorded without its key
STATUSES = ("ok", "ok", "ok", "client_closed", "upstream_error", "interrupted")
# Every bin's upper bound and its neighbours, up to about 7 minutes: where the two dialects'
# binning of migration 0010 (Python here, PL/pgSQL there) could disagree.
LATENCIES = sorted({v for b in range(130) for v in (math.ceil(1.1**b) - 1, math.ceil(1.1**b), math.ceil(1.1**b) + 1)})


def floor_to(moment: dt.datetime, granularity: str) -> dt.datetime:
    """The bucket of ``moment``, computed apart from the code under test."""
    seconds = 3600 if granularity == "hour" else 86400
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    whole = (moment - epoch) // dt.timedelta(seconds=seconds)
    return epoch + whole * dt.timedelta(seconds=seconds)


def expected(logs: Iterable[RequestLog], account_id: str, granularity: str, **only: str) -> dict[tuple, dict]:
    """(bucket, model, key) -> the sums a rollup row must hold, from the logs themselves."""
    rows: dict[tuple, dict[str, Any]] = {}
    for log in logs:
        if log.account_id != account_id or any(getattr(log, name) != value for name, value in only.items()):
            continue
        row = rows.setdefault(
            (floor_to(log.created_at, granularity), log.model, log.key_id),
            {"requests": 0, "errors": 0, "client_closed": 0, "prompt_tokens": 0, "completion_tokens": 0,
             "reasoning_tokens": 0, "cached_tokens": 0, "cost": 0, "latency_ms_sum": 0, "latency_bins": {},
             "ttft_ms_sum": 0, "ttft_count": 0},
        )  # fmt: skip
        row["requests"] += 1
        row["errors"] += log.status not in ("ok", "client_closed")
        row["client_closed"] += log.status == "client_closed"
        for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cost"):
            row[name] += getattr(log, name)
        row["latency_ms_sum"] += log.latency_ms
        if log.ttft_ms is not None:
            row["ttft_ms_sum"] += log.ttft_ms
            row["ttft_count"] += 1
        bins = row["latency_bins"]
        bins[latency_bin(log.latency_ms)] = bins.get(latency_bin(log.latency_ms), 0) + 1
    return rows


async def actual(storage, account_id: str, granularity: str, since: dt.datetime, until: dt.datetime, **only):
    found = await storage.usage_rollups(account_id, granularity=granularity, since=since, until=until, **only)
    keys = [(r.bucket_start, r.model, r.key_id) for r in found]
    assert keys == sorted(keys)  # oldest first, then by model and key
    return {(r.bucket_start, r.model, r.key_id): {name: getattr(r, name) for name in expected_fields()} for r in found}


def expected_fields() -> tuple[str, ...]:
    return ("requests", "errors", "client_closed", "prompt_tokens", "completion_tokens", "reasoning_tokens",
            "cached_tokens", "cost", "latency_ms_sum", "latency_bins", "ttft_ms_sum", "ttft_count")  # fmt: skip


def random_logs(rng: random.Random, count: int) -> list[RequestLog]:
    logs = []
    for i in range(count):
        account = "acct_a" if i % 5 else "acct_b"
        logs.append(
            request_log(
                f"req_{i:05}",
                account_id=account,
                key_id=rng.choice(KEYS) if account == "acct_a" else "key_b",
                model=rng.choice(MODELS),
                status=rng.choice(STATUSES),
                prompt_tokens=rng.randrange(0, 5000),
                completion_tokens=rng.randrange(0, 3000),
                reasoning_tokens=rng.randrange(0, 100),
                cached_tokens=rng.randrange(0, 50),
                cost=rng.randrange(0, 10**7),
                latency_ms=rng.choice(LATENCIES),
                ttft_ms=rng.choice((None, rng.randrange(0, 5000))),
                # Over three days around T0, some on the microsecond either side of an hour.
                created_at=T0 + dt.timedelta(microseconds=rng.choice((0, 1, rng.randrange(-86400, 172800) * 10**6))),
            )
        )
    return logs


async def test_rollups_by_model_and_key_are_the_sums_of_their_logs(storage):
    rng = random.Random(2026)
    logs = random_logs(rng, 600)
    at = 0
    while at < len(logs):  # batches of any size, each retried with the next one's first rows
        size = rng.randrange(1, 80)
        await storage.insert_request_logs(logs[max(0, at - 5) : at + size])
        at += size
    since, until = T0 - dt.timedelta(days=3), T0 + dt.timedelta(days=3)
    for granularity in ("hour", "day"):
        for only in ({}, {"model": "gpt-4o"}, {"key_id": "key_a1"}, {"key_id": ""}, {"key_id": "key_a2", "model": "gpt-4o-mini"}):  # fmt: skip
            want = expected(logs, "acct_a", granularity, **only)
            assert want, only
            assert await actual(storage, "acct_a", granularity, since, until, **only) == want, (granularity, only)
        # Another account's key, like anything outside the account's own rows, matches nothing.
        assert await actual(storage, "acct_a", granularity, since, until, key_id="key_b") == {}
        assert await actual(storage, "acct_b", granularity, since, until) == expected(logs, "acct_b", granularity)


def sql_literal(value: Any, postgres: bool) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return ("true" if value else "false") if postgres else str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime):
        if postgres:
            return f"'{value.isoformat()}'::timestamptz"
        return str((value - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1))
    return "'" + str(value).replace("'", "''") + "'"


async def test_migration_0010_rebuilds_the_rollups_by_key_from_the_logs(database_url, aio_loop, monkeypatch):
    """A database at version 9 (its rollups by model only, and some of its logs never rolled
    up, as logs written before migration 0003): once migrated, its rollups are by model and
    key and equal the sums over every log, histograms included; new logs add to them."""
    postgres = not database_url.startswith("sqlite:")
    module = postgres_connection if postgres else sqlite_connection
    every = module.load_migrations
    monkeypatch.setattr(module, "load_migrations", lambda dialect: [m for m in every(dialect) if m.version <= 9])
    rng = random.Random(10)
    old = random_logs(rng, 500)
    old.append(request_log("req_1969", account_id="acct_a", created_at=dt.datetime(1969, 12, 31, 23, 30, tzinfo=UTC)))
    async with open_storage(database_url, loop=aio_loop):
        pass
    columns = [name for name in REQUEST_LOG_COLUMNS if name != "error_message"]  # version 15's
    values = ", ".join(
        "(" + ", ".join(sql_literal(getattr(log, name), postgres) for name in columns) + ")" for log in old
    )
    await raw(database_url, aio_loop, f"INSERT INTO request_logs ({', '.join(columns)}) VALUES {values}")
    # A rollup of version 9 (by model only) that sums nothing of the above: the rebuild drops it.
    start = sql_literal(floor_to(T0, "hour"), postgres)
    await raw(
        database_url,
        aio_loop,
        "INSERT INTO usage_rollups (account_id, granularity, bucket_start, model, requests, errors, client_closed,"
        " prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, cost, latency_ms_sum)"
        f" VALUES ('acct_a', 'hour', {start}, 'gpt-4o', 99, 0, 0, 0, 0, 0, 0, 99, 0)",
    )
    monkeypatch.setattr(module, "load_migrations", every)
    since, until = dt.datetime(1969, 12, 1, tzinfo=UTC), T0 + dt.timedelta(days=3)
    async with open_storage(database_url, loop=aio_loop) as storage:
        for granularity in ("hour", "day"):
            for account in ("acct_a", "acct_b"):
                want = expected(old, account, granularity)
                assert await actual(storage, account, granularity, since, until) == want, (granularity, account)
            only = {"key_id": "key_a2", "model": "gpt-4o"}
            assert await actual(storage, "acct_a", granularity, since, until, **only) == expected(
                old, "acct_a", granularity, **only
            )
        new = random_logs(random.Random(11), 300)
        new = [attrs.evolve(log, id=log.id + "_new") for log in new]
        await storage.insert_request_logs(new)
        for granularity in ("hour", "day"):
            want = expected(old + new, "acct_a", granularity)
            assert await actual(storage, "acct_a", granularity, since, until) == want


@pytest.mark.parametrize("latency", LATENCIES[:40] + LATENCIES[-5:])
def test_the_latencies_above_bin_as_documented(latency):
    """The bins these tests compare are the documented ones: the lowest bin whose upper
    bound holds the latency."""
    bin_ = latency_bin(latency)
    assert latency <= math.ceil(1.1**bin_) and (bin_ == 0 or math.ceil(1.1 ** (bin_ - 1)) < latency)
