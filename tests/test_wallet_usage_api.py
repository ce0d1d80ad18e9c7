"""The wallet and usage API through a real gateway on both backends: idempotent top-up,
transactions, request logs, rollups that agree with the logs and the ledger, and isolation
between accounts."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import httpx
import pytest
import trio
from fake_azure import open_fake_azure
from harness import MODEL, open_gateway

MESSAGES = [{"role": "user", "content": "hello there"}]
SELF_TOP_UP = {"wallet": {"self_top_up": True}}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def walk(client: httpx.AsyncClient, url: str, key: str, **params) -> list[dict]:
    """Every item of a list endpoint, page by page."""
    items: list[dict] = []
    after = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        body = (await client.get(url, headers=auth(key), params=query)).json()
        assert body["object"] == "list"
        items += body["data"]
        if body["data"]:
            assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][-1]["id"]
        if not body["has_more"]:
            return items
        after = body["last_id"]


async def test_top_up_is_off_unless_configured(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient(base_url=gw.base_url) as client:
            response = await client.post("/wallet/top-up", headers=auth(key), json={"amount": "5.00"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "top_up_disabled"
        assert (await gw.storage.get_wallet(account)).balance == 1_000_000_000
        assert len(await gw.storage.ledger_entries(account)) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "-5"},
        {"amount": "0"},
        {"amount": "0.5"},
        {"amount": "1000.01"},
        {"amount": "1.0000000001"},
        {"amount": "ten"},
        {"amount": True},
        {"amount": None},
        {},
        {"amount": "5", "currency": "EUR"},
        ["5"],
        {"amount": [5]},
    ],
)
async def test_bad_top_ups_are_refused_and_change_nothing(database_url, body):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, **SELF_TOP_UP) as gw:
        account, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient(base_url=gw.base_url) as client:
            response = await client.post("/wallet/top-up", headers=auth(key), json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert len(await gw.storage.ledger_entries(account)) == 1
        assert await gw.storage.verify_ledger() == []


async def test_fifty_concurrent_top_ups_with_one_key_credit_once(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, **SELF_TOP_UP) as gw:
        account, key = await gw.funded_account("1.00")
        responses: list[httpx.Response] = []
        headers = {**auth(key), "Idempotency-Key": "order-1234"}
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:

            async def top_up(amount: object) -> None:
                responses.append(await client.post("/wallet/top-up", headers=headers, json={"amount": amount}))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    # The same amount, as a string or a JSON number: the same request.
                    nursery.start_soon(top_up, "10.00" if i % 2 else 10)
            assert {r.status_code for r in responses} == {200}
            bodies = {r.text for r in responses}
            assert len(bodies) == 1  # every retry sees the first result
            assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 49
            first = responses[0].json()
            assert first["amount"] == "10.00" and first["transaction"]["type"] == "top_up"
            assert first["transaction"]["balance_after"] == "11.00"

            # Another amount under the same key is refused; a new key credits again.
            reused = await client.post("/wallet/top-up", headers=headers, json={"amount": "20.00"})
            assert reused.status_code == 409
            assert reused.json()["error"]["code"] == "idempotency_key_reused"
            fresh = await client.post(
                "/wallet/top-up", headers={**auth(key), "Idempotency-Key": "order-1235"}, json={"amount": 2.5}
            )
            assert fresh.json()["transaction"]["balance_after"] == "13.50"
            # Without a key, each call credits.
            await client.post("/wallet/top-up", headers=auth(key), json={"amount": "1"})
            wallet = (await client.get("/wallet", headers=auth(key))).json()
        assert wallet == {
            "object": "wallet",
            "balance": "14.50",
            "locked_balance": "0.00",
            "available": "14.50",
            "currency": "USD",
        }
        top_ups = [e for e in await gw.storage.ledger_entries(account) if e.type == "top_up"]
        assert len(top_ups) == 4
        assert await gw.storage.verify_ledger() == []


async def test_transactions_list_every_movement_newest_first_and_page_stably(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, **SELF_TOP_UP) as gw:
        account, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
            for _ in range(3):
                # A cap above the answer's length: the unused part of the hold is released.
                response = await client.post(
                    "/chat/completions",
                    headers=auth(key),
                    json={"model": MODEL, "messages": MESSAGES, "max_tokens": 500},
                )
                assert response.status_code == 200
            everything = await walk(client, "/wallet/transactions", key, limit=100)
            # A chat call is a hold, a charge and a release; the seed is a top-up.
            assert [t["type"] for t in everything].count("hold") == 3
            assert {t["type"] for t in everything} == {"top_up", "hold", "charge", "release"}
            ids = [int(t["id"].removeprefix("txn_")) for t in everything]
            assert ids == sorted(ids, reverse=True)
            charges = [t for t in everything if t["type"] == "charge"]
            assert all(t["request_id"].startswith("req_") for t in charges)

            # Paging two at a time while new rows arrive: no row twice, none of the old ones lost.
            seen: list[str] = []
            after = None
            while True:
                params = {"limit": 2, **({"after": after} if after else {})}
                page = (await client.get("/wallet/transactions", headers=auth(key), params=params)).json()
                seen += [t["id"] for t in page["data"]]
                await client.post("/wallet/top-up", headers=auth(key), json={"amount": "1"})
                if not page["has_more"]:
                    break
                after = page["last_id"]
            assert seen == [t["id"] for t in everything]

            one = await client.get(f"/wallet/transactions/{everything[0]['id']}", headers=auth(key))
            assert one.json() == everything[0]
            for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"limit": "²"}, {"lmit": 5}):
                response = await client.get("/wallet/transactions", headers=auth(key), params=bad)
                assert response.status_code == 400, bad
            for odd in ("txn_²", "txn_", "42", "txn_99999999999999999999"):
                assert (await client.get(f"/wallet/transactions/{odd}", headers=auth(key))).status_code == 404


async def test_usage_requests_rollups_and_ledger_agree(database_url):
    async with open_fake_azure(reply="alpha beta gamma delta") as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("5.00")
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
            request_ids = []
            for i in range(6):
                body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 20, "stream": i % 2 == 1}
                if i == 4:
                    fake.fail_next(400, {"error": {"code": "BadRequest", "message": "nope"}})
                response = await client.post("/chat/completions", headers=auth(key), json=body)
                request_ids.append(response.headers["x-request-id"])
                await response.aread()

            # Visible soon: docs/api.md says within about a second (at the default 0.2 s flush;
            # this gateway flushes every 0.02 s). The deadline leaves room for a loaded machine.
            with trio.fail_after(5):
                while len(await walk(client, "/usage/requests", key)) < 6:
                    await trio.sleep(0.02)
            logs = await walk(client, "/usage/requests", key, limit=4)
            assert [r["id"] for r in logs] == list(reversed(request_ids))
            assert {r["status"] for r in logs} >= {"ok"} and len({r["status"] for r in logs}) == 2
            failed = next(r for r in logs if r["status"] != "ok")
            assert failed["cost"] == "0.00"
            ok = next(r for r in logs if r["status"] == "ok")
            assert ok["region"] == "eastus" and ok["model"] == MODEL and ok["prompt_tokens"] > 0
            assert "deployment" not in ok  # the operator's deployment name stays private

            # Filters.
            only_ok = await walk(client, "/usage/requests", key, status="ok")
            assert len(only_ok) == 5
            assert await walk(client, "/usage/requests", key, model="gpt-4o") == []
            future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
            assert await walk(client, "/usage/requests", key, since=future) == []
            assert len(await walk(client, "/usage/requests", key, until=future)) == 6
            bad = await client.get("/usage/requests", headers=auth(key), params={"since": "yesterday"})
            assert bad.status_code == 400

            hours = (await client.get("/usage/rollups", headers=auth(key), params={"granularity": "hour"})).json()
            days = (
                await client.get(
                    "/usage/rollups", headers=auth(key), params={"granularity": "day", "group_by": "model"}
                )
            ).json()
        request_cost = sum(Decimal(r["cost"]) for r in logs)
        charges = sum(e.amount for e in await gw.storage.ledger_entries(account) if e.type == "charge")
        assert request_cost == Decimal(charges) / 10**9 > 0
        for rollup in (hours, days):
            assert sum(Decimal(b["cost"]) for b in rollup["data"]) == request_cost
            assert sum(b["requests"] for b in rollup["data"]) == 6
            assert sum(b["errors"] for b in rollup["data"]) == 1
            assert sum(b["prompt_tokens"] for b in rollup["data"]) == sum(r["prompt_tokens"] for r in logs)
            assert sum(b["completion_tokens"] for b in rollup["data"]) == sum(r["completion_tokens"] for r in logs)
            bucket = rollup["data"][-1]
            assert bucket["latency_ms_p95"] >= max(r["latency_ms"] for r in logs) * 0.95 - 1
        assert days["data"][0]["model"] == MODEL and hours["data"][0]["model"] is None
        assert await gw.storage.verify_ledger() == []


async def test_another_accounts_ids_are_not_found(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, key_a = await gw.funded_account("1.00")
        _, key_b = await gw.funded_account("1.00")
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
            response = await client.post(
                "/chat/completions", headers=auth(key_a), json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5}
            )
            request_id = response.headers["x-request-id"]
            await gw.flushed()
            txn = (await client.get("/wallet/transactions", headers=auth(key_a))).json()["data"][0]["id"]
            for path in (f"/usage/requests/{request_id}", f"/wallet/transactions/{txn}"):
                assert (await client.get(path, headers=auth(key_a))).status_code == 200
                other = await client.get(path, headers=auth(key_b))
                assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
            for path, params in (("/usage/requests", {"after": request_id}), ("/wallet/transactions", {"after": txn})):
                assert (await client.get(path, headers=auth(key_b), params=params)).status_code == 404
            assert await walk(client, "/usage/requests", key_b) == []
            b_rollups = (await client.get("/usage/rollups", headers=auth(key_b))).json()
            assert b_rollups["data"] == []
            b_txns = await walk(client, "/wallet/transactions", key_b)
            assert [t["type"] for t in b_txns] == ["top_up"]
