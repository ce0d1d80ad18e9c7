"""The usage API's key and model filters and its per-key and per-model rollups, through a real
gateway on both backends: requests made with two keys on two models add up, per key, per
model and per both, to what was sent and charged, in /usage/requests and /usage/rollups
alike (the p95 and mean of a key's buckets too); another account's key id matches nothing;
bad values are a 400 naming the parameter; answers without group_by keep their fields."""

from __future__ import annotations

import json
import math
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
from fake_azure import open_fake_azure
from harness import MODEL, azure_deployment, open_gateway
from test_wallet_usage_api import auth, walk

from omixa.storage import latency_bin_upper
from omixa.storage._common import latency_bin

OTHER_MODEL = "gpt-4o"
MODELS = (MODEL, OTHER_MODEL)
MESSAGES = [{"role": "user", "content": "count the sheep"}]
# The fields of a bucket before group_by=key existed: an answer without it keeps exactly these.
BUCKET_FIELDS = {
    "object", "start", "end", "model", "requests", "errors", "client_closed", "prompt_tokens",
    "completion_tokens", "reasoning_tokens", "cached_tokens", "total_tokens", "cost", "latency_ms_mean",
    "latency_ms_p95",
}  # fmt: skip


def usage_of_stream(text: str) -> dict[str, int]:
    """The usage frame of an SSE answer."""
    for line in text.splitlines():
        if line.startswith("data: {"):
            frame = json.loads(line.removeprefix("data: "))
            if frame.get("usage"):
                return frame["usage"]
    raise AssertionError("no usage frame")


def p95_of(latencies: list[int]) -> int:
    """The p95 docs/api.md defines, from the latencies themselves: the upper bound of the
    histogram bin (bins growing by 10%) where the count reaches 95%; at most 10% above the
    true 95th percentile, never below it."""
    counts = Counter(latency_bin(latency) for latency in latencies)
    seen = 0
    for bin_ in sorted(counts):
        seen += counts[bin_]
        if seen >= 0.95 * len(latencies):
            break
    estimate = latency_bin_upper(bin_)
    true = sorted(latencies)[math.ceil(0.95 * len(latencies)) - 1]
    assert true <= estimate <= max(true * 1.1 + 1, 1)
    return estimate


def totals(items: list[dict[str, Any]], *, counted: str = "requests") -> tuple:
    """(requests, errors, prompt tokens, completion tokens, cost) of request logs or buckets."""
    if counted == "logs":
        return (
            len(items),
            sum(i["status"] != "ok" for i in items),
            sum(i["prompt_tokens"] for i in items),
            sum(i["completion_tokens"] for i in items),
            sum(Decimal(i["cost"]) for i in items),
        )
    return (
        sum(b["requests"] for b in items),
        sum(b["errors"] for b in items),
        sum(b["prompt_tokens"] for b in items),
        sum(b["completion_tokens"] for b in items),
        sum(Decimal(b["cost"]) for b in items),
    )


async def account_with_two_keys(gw, usd: str = "20.00") -> tuple[str, list[tuple[str, str]]]:
    """A funded account and two keys of it: (account id, [(key id, secret), ...])."""
    accounts = gw.engine.accounts
    account = await accounts.create_account("console@example.com")
    await gw.storage.top_up(account.id, int(Decimal(usd) * 10**9))
    keys = [await accounts.create_key(account.id) for _ in range(2)]
    return account.id, [(k.record.id, k.secret) for k in keys]


async def test_filters_and_groupings_by_key_and_model_add_up_to_what_was_sent(database_url):
    async with open_fake_azure(reply="one two three four five six") as fake:
        deployments = [azure_deployment(fake), azure_deployment(fake, name="eastus-4o", model=OTHER_MODEL)]
        async with open_gateway(database_url, fake, deployments=deployments) as gw:
            account, keys = await account_with_two_keys(gw)
            _, [(other_key_id, other_key), _] = await account_with_two_keys(gw, "1.00")
            sent: list[dict[str, Any]] = []  # one per request: its id, key, model, tokens, status
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
                for key_id, secret in keys:
                    for model in MODELS:
                        for n in range(3):
                            stream = n == 2
                            body = {"model": model, "messages": MESSAGES, "max_tokens": 4 + n, "stream": stream}
                            if stream:
                                body["stream_options"] = {"include_usage": True}
                            response = await client.post("/chat/completions", headers=auth(secret), json=body)
                            assert response.status_code == 200, response.text
                            usage = usage_of_stream(response.text) if stream else response.json()["usage"]
                            sent.append(
                                {"id": response.headers["x-request-id"], "key_id": key_id, "model": model,
                                 "prompt_tokens": usage["prompt_tokens"], "status": "ok",
                                 "completion_tokens": usage["completion_tokens"]}
                            )  # fmt: skip
                # One refused by the upstream: counted as an error, nothing charged.
                fake.fail_next(400, {"error": {"code": "BadRequest", "message": "nope"}})
                failed = await client.post(
                    "/chat/completions", headers=auth(keys[1][1]), json={"model": OTHER_MODEL, "messages": MESSAGES}
                )
                assert failed.status_code == 400
                sent.append({"id": failed.headers["x-request-id"], "key_id": keys[1][0], "model": OTHER_MODEL,
                             "prompt_tokens": 0, "completion_tokens": 0, "status": "failed"})  # fmt: skip
                await gw.flushed()
                charged = {
                    e.request_id: e.amount for e in await gw.storage.ledger_entries(account) if e.type == "charge"
                }
                for request in sent:
                    request["cost"] = Decimal(charged.get(request["id"], 0)) / 10**9
                assert sum(r["cost"] > 0 for r in sent) == 12

                def expect(only: dict[str, str], **also: str) -> tuple:
                    wanted = list(only.items()) + list(also.items())
                    chosen = [r for r in sent if all(r[name] == value for name, value in wanted)]
                    return (
                        len(chosen),
                        sum(r["status"] != "ok" for r in chosen),
                        sum(r["prompt_tokens"] for r in chosen),
                        sum(r["completion_tokens"] for r in chosen),
                        sum(r["cost"] for r in chosen),
                    )

                # Either key serves the account's usage: the lists are the account's, not the key's.
                key_a, key_b = keys[0][1], keys[1][1]
                everything = await walk(client, "/usage/requests", key_b, limit=5)
                assert {r["id"] for r in everything} == {r["id"] for r in sent}
                assert totals(everything, counted="logs") == expect({})
                combos: list[dict[str, str]] = [{}]
                combos += [{"key_id": k} for k, _ in keys] + [{"model": m} for m in MODELS]
                combos += [{"key_id": k, "model": m} for k, _ in keys for m in MODELS]
                for only in combos:
                    logs = await walk(client, "/usage/requests", key_a, limit=4, **only)
                    want = [r["id"] for r in sent if all(r[name] == value for name, value in only.items())]
                    assert sorted(r["id"] for r in logs) == sorted(want), only
                    assert all(all(log[name] == value for name, value in only.items()) for log in logs)
                    assert totals(logs, counted="logs") == expect(only), only
                    for granularity in ("hour", "day"):
                        for group_by in (None, "model", "key"):
                            params = {
                                "granularity": granularity,
                                **only,
                                **({"group_by": group_by} if group_by else {}),
                            }
                            response = await client.get("/usage/rollups", headers=auth(key_a), params=params)
                            buckets = response.json()["data"]
                            assert totals(buckets) == expect(only), params
                            if group_by is None:
                                continue
                            field = "model" if group_by == "model" else "key_id"
                            for value in {r[field] for r in sent}:
                                mine = [b for b in buckets if b[field] == value]
                                assert totals(mine) == expect(only, **{field: value}), (params, value)
                # The requests' own status filter combines with them too.
                status = failed.json()["error"]["code"]
                failed_logs = await walk(client, "/usage/requests", key_a, key_id=keys[1][0], status=status)
                assert [r["id"] for r in failed_logs] == [failed.headers["x-request-id"]]

                # Per key, the latency figures are those of that key's logs alone.
                hours = await client.get("/usage/rollups", headers=auth(key_a), params={"group_by": "key"})
                for bucket in hours.json()["data"]:
                    logs = [
                        log
                        for log in everything
                        if log["key_id"] == bucket["key_id"] and bucket["start"] <= log["created_at"] < bucket["end"]
                    ]
                    assert bucket["requests"] == len(logs)
                    latencies = [log["latency_ms"] for log in logs]
                    assert bucket["latency_ms_mean"] == round(sum(latencies) / len(latencies), 1)
                    assert bucket["latency_ms_p95"] == p95_of(latencies)

                # The fields: without group_by (and with group_by=model) as before; by key, key_id too.
                for params, model_null in (({}, True), ({"group_by": "model"}, False), ({"group_by": "key"}, True)):
                    data = (await client.get("/usage/rollups", headers=auth(key_a), params=params)).json()["data"]
                    assert data
                    for bucket in data:
                        extra = {"key_id"} if params.get("group_by") == "key" else set()
                        assert set(bucket) == BUCKET_FIELDS | extra, params
                        assert (bucket["model"] is None) == model_null

                # Another account's key id is no key of this account: nothing, whoever asks.
                for secret, key_id in ((key_a, other_key_id), (other_key, keys[0][0])):
                    assert await walk(client, "/usage/requests", secret, key_id=key_id) == []
                    for group_by in ({}, {"group_by": "key"}, {"group_by": "model"}):
                        params = {"key_id": key_id, "granularity": "day", **group_by}
                        response = await client.get("/usage/rollups", headers=auth(secret), params=params)
                        assert response.status_code == 200 and response.json()["data"] == []
                own = await client.get("/usage/rollups", headers=auth(other_key), params={"group_by": "key"})
                assert own.json()["data"] == []  # the other account made no request


BAD_FILTERS = [
    ("/usage/rollups", {"group_by": "keys"}, "group_by"),
    ("/usage/rollups", {"group_by": "model,key"}, "group_by"),
    ("/usage/rollups", {"group_by": ""}, "group_by"),
    ("/usage/rollups", {"key_id": "key_123"}, "key_id"),
    ("/usage/requests", {"key_id": "omx_live_abc"}, "key_id"),
    ("/usage/requests", {"key_id": "KEY_" + "0" * 24}, "key_id"),
    ("/usage/requests", {"model": ""}, "model"),
    ("/usage/rollups", {"model": ""}, "model"),
    ("/usage/requests", {"format": "xml"}, "format"),
    ("/usage/rollups", {"format": "CSV"}, "format"),
    ("/usage/requests", {"format": "csv", "key_id": "key_x"}, "key_id"),
    ("/usage/rollups", {"format": "csv", "group_by": "region"}, "group_by"),
]


async def test_bad_filters_are_a_400_naming_the_parameter(tmp_path):
    """Refused before anything is read, as JSON, whichever format was asked for."""
    async with open_fake_azure() as fake, open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake) as gw:
        _, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient(base_url=gw.base_url) as client:
            for path, params, param in BAD_FILTERS:
                for accept in ("application/json", "text/csv"):
                    response = await client.get(path, headers={**auth(key), "Accept": accept}, params=params)
                    assert response.status_code == 400, (path, params, response.text)
                    assert response.headers["content-type"] == "application/json"
                    error = response.json()["error"]
                    assert (error["code"], error["param"]) == ("invalid_request", param), (path, params)
                    assert error["request_id"] == response.headers["x-request-id"]
