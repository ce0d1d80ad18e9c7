"""/usage on both backends: its feed over HTTP (what it refuses, in the API's envelope; its
numbers and CSV are the API's), and the page in a real browser (tests/console_usage_driver.py:
a custom range, key and model filters, chart tooltips and ticks, the CSV download, phone
layout, accessibility).

The account has two keys and usage on two models: requests made now through the gateway
(streamed and not), and request logs written with
explicit past times through storage's own insert (the same write that adds them to the
rollups), so a custom range has something to include and something to exclude.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_kit import CHROMIUM, backend_of, run_driver
from fake_azure import open_fake_azure
from harness import MODEL, azure_deployment, open_gateway
from test_dashboard_http import signin_form

from omixa.storage import RequestLog

OTHER_MODEL = "gpt-4o"
DRIVER = Path(__file__).resolve().parent / "console_usage_driver.py"
POLL_SECONDS = 1.0
# The browser's zone in the browser test: not UTC, so local days and UTC days differ.
ZONE = "America/New_York"
UTC = dt.UTC


def deployments(fake: Any) -> list[dict[str, Any]]:
    return [azure_deployment(fake), azure_deployment(fake, name="eastus-4o", model=OTHER_MODEL)]


async def account_with_two_keys(gw: Any, usd: str = "20.00") -> tuple[str, list[tuple[str, str, str]]]:
    """A funded account and two keys of it: (account id, [(key id, prefix, secret), ...])."""
    accounts = gw.engine.accounts
    account = await accounts.create_account("usage@example.com")
    await gw.storage.top_up(account.id, int(Decimal(usd) * 10**9))
    keys = [await accounts.create_key(account.id) for _ in range(2)]
    return account.id, [(k.record.id, k.record.prefix, k.secret) for k in keys]


def past_log(n: int, account: str, key_id: str, model: str, at: dt.datetime, **more: Any) -> RequestLog:
    values: dict[str, Any] = dict(
        id=f"req_past{n:020d}", account_id=account, key_id=key_id, model=model, provider="azure",
        deployment="eastus-1", region="eastus", status="ok", stream=True, prompt_tokens=100 + n,
        completion_tokens=20 + n, reasoning_tokens=0, cached_tokens=0, cost=1_234_567 + n * 1_000_001,
        latency_ms=300 + 10 * n, ttft_ms=80 + n, created_at=at,
    )  # fmt: skip
    values.update(more)
    return RequestLog(**values)


async def seed(gw: Any, fake: Any) -> dict[str, Any]:
    """Usage now (through the gateway) and in the past (written with explicit times)."""
    account, keys = await account_with_two_keys(gw)
    today = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    day = (today - dt.timedelta(days=3)).replace(hour=12)  # 07:00 in New York that day
    logs = [
        past_log(1, account, keys[0][0], MODEL, day + dt.timedelta(minutes=5)),
        past_log(2, account, keys[1][0], MODEL, day + dt.timedelta(hours=2, minutes=10)),
        past_log(3, account, keys[1][0], OTHER_MODEL, day + dt.timedelta(hours=3), reasoning_tokens=7),
        past_log(4, account, keys[0][0], OTHER_MODEL, day + dt.timedelta(hours=5), status="upstream_error", cost=0),
        # 02:00 UTC that day is the evening before in New York: outside that local day.
        past_log(5, account, keys[0][0], MODEL, day.replace(hour=2)),
        past_log(6, account, keys[1][0], OTHER_MODEL, day - dt.timedelta(days=7)),
    ]
    await gw.storage.insert_request_logs(logs)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
        for _, _, secret in keys:
            for model in (MODEL, OTHER_MODEL):
                for stream in (False, True):
                    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                    if stream:
                        body |= {"stream": True, "stream_options": {"include_usage": True}}
                    response = await client.post("/chat/completions", headers=auth(secret), json=body)
                    assert response.status_code == 200, response.text
    await gw.flushed()
    return {"account": account, "keys": keys, "past_day": day.isoformat()}


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def signed_in(client: httpx.AsyncClient, secret: str) -> None:
    token = await signin_form(client)
    assert (await client.post("/signin", data={"api_key": secret, "csrf": token})).status_code == 302


async def test_usage_feed_refusals_and_numbers_over_http(database_url):
    async with (
        open_fake_azure(reply="one two three") as fake,
        open_gateway(database_url, fake, deployments=deployments(fake)) as gw,
    ):
        seeded = await seed(gw, fake)
        (key_a, _, secret_a), (key_b, prefix_b, _) = seeded["keys"]
        _, [(foreign_key, _, _), _] = await account_with_two_keys(gw, "1.00")
        async with httpx.AsyncClient(base_url=gw.root_url, timeout=30) as client:
            # Without a session: 401 in the envelope.
            refused = await client.get("/usage/data")
            assert refused.status_code == 401 and refused.json()["error"]["type"]
            assert (await client.get("/usage/data/rollups.csv")).status_code == 401
            await signed_in(client, secret_a)

            async def error(path: str, **params: str) -> dict[str, Any]:
                response = await client.get(path, params=params)
                assert response.status_code == 400, (params, response.text)
                assert response.headers["content-type"].startswith("application/json")
                return response.json()["error"]

            for path in ("/usage/data", "/usage/data/rollups.csv"):
                bad = await error(path, since="yesterday")
                assert bad["param"] == "since" and "RFC 3339" in bad["message"]
                after = await error(path, since="2026-03-02T00:00:00Z", until="2026-03-01T00:00:00Z")
                assert after["param"] == "since" and "before" in after["message"]
                same = await error(path, since="2026-03-01T00:00:00Z", until="2026-03-01T00:00:00Z")
                assert same["param"] == "since"
                wide = await error(path, granularity="hour", since="2026-01-01T00:00:00Z", until="2026-03-01T00:00:00Z")
                assert "At most 31 days" in wide["message"]
                assert (await error(path, granularity="week"))["param"] == "granularity"
                # A key id of another account, or not shaped like one: not one of this account's keys.
                for key_id in (foreign_key, "key_" + "0" * 24, "nope"):
                    unknown = await error(path, key_id=key_id)
                    assert unknown["param"] == "key_id" and "not one of this account's keys" in unknown["message"]
                assert (await error(path, model=""))["param"] == "model"
                assert (await error(path, colour="blue"))["param"] == "colour"

            # The feed's numbers are the API's, for each filter, with an explicit range.
            since = (dt.datetime.fromisoformat(seeded["past_day"]) - dt.timedelta(days=10)).replace(hour=0)
            until = dt.datetime.now(UTC) + dt.timedelta(days=1)
            rng = {"granularity": "day", "since": since.isoformat(), "until": until.isoformat()}
            for only in ({}, {"key_id": key_b}, {"model": OTHER_MODEL}, {"key_id": key_a, "model": MODEL}):
                feed = (await client.get("/usage/data", params=rng | only)).json()
                api = await client.get(f"{gw.base_url}/usage/rollups", headers=auth(secret_a), params=rng | only)
                buckets = api.json()["data"]
                assert feed["since"] == api.json()["since"] and feed["until"] == api.json()["until"]
                assert [{k: b[k] for k in a} for a, b in zip(buckets, feed["buckets"], strict=True)] == buckets
                totals = feed["totals"]
                assert totals["requests"] == sum(b["requests"] for b in buckets)
                assert totals["errors"] == sum(b["errors"] for b in buckets)
                assert Decimal(totals["cost"]) == sum(Decimal(b["cost"]) for b in buckets)
                assert totals["prompt_tokens"] == sum(b["prompt_tokens"] for b in buckets)
                by_model = await client.get(
                    f"{gw.base_url}/usage/rollups", headers=auth(secret_a), params=rng | only | {"group_by": "model"}
                )
                for row in feed["models"]:
                    mine = [b for b in by_model.json()["data"] if b["model"] == row["model"]]
                    assert row["requests"] == sum(b["requests"] for b in mine)
                    assert Decimal(row["cost"]) == sum(Decimal(b["cost"]) for b in mine)
                by_key = await client.get(
                    f"{gw.base_url}/usage/rollups", headers=auth(secret_a), params=rng | only | {"group_by": "key"}
                )
                for row in feed["keys"]:
                    mine = [b for b in by_key.json()["data"] if b["key_id"] == row["key_id"]]
                    assert row["requests"] == sum(b["requests"] for b in mine)
                for log in feed["latest"]:
                    assert all(log[name] == value for name, value in only.items())
                # The CSV download is the API's CSV, byte for byte.
                ours = await client.get("/usage/data/rollups.csv", params=rng | only)
                theirs = await client.get(
                    f"{gw.base_url}/usage/rollups", headers=auth(secret_a), params=rng | only | {"format": "csv"}
                )
                assert ours.status_code == 200 and ours.headers["content-type"].startswith("text/csv")
                assert ours.content == theirs.content and ours.content.count(b"\r\n") == len(buckets) + 1
                assert ours.headers["content-disposition"] == theirs.headers["content-disposition"]

            feed = (await client.get("/usage/data", params=rng)).json()
            assert {k["prefix"] for k in feed["key_options"]} >= {prefix_b}
            assert {MODEL, OTHER_MODEL} <= set(feed["model_options"])
            # Answered requests have a time to first token, and the rollups keep it.
            assert feed["totals"]["ttft_ms_mean"] is not None
            assert feed["totals"]["latency_ms_p50"] <= feed["totals"]["latency_ms_p95"]
            assert feed["totals"]["reasoning_tokens"] == 7


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium)")
async def test_usage_page_in_a_real_browser(database_url):
    async with (
        open_fake_azure(reply="one two three four five") as fake,
        open_gateway(database_url, fake, deployments=deployments(fake), dashboard={"poll_seconds": POLL_SECONDS}) as gw,
    ):
        seeded = await seed(gw, fake)
        keys = seeded["keys"]
        past = dt.datetime.fromisoformat(seeded["past_day"])
        seen = await run_driver(
            DRIVER,
            {
                "root": gw.root_url,
                "secret": keys[0][2],
                "keys": [[key_id, prefix] for key_id, prefix, _ in keys],
                "models": [MODEL, OTHER_MODEL],
                "zone": ZONE,
                "custom_day": past.date().isoformat(),  # the same date in New York (07:00 there)
                "poll_seconds": POLL_SECONDS,
                "backend": backend_of(database_url),
            },
        )
        # The custom day held the four requests of that New York day; 02:00 UTC (the evening
        # before there) and the week before were left out.
        assert seen["custom_requests"] == 4  # past logs 1 to 4
        assert seen["tooltip"]
