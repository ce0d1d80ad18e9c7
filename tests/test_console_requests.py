"""The request log pages (/requests, /requests/<id>) and their feeds: over plain HTTP, what
they refuse; in a real browser (tests/console_requests_driver.py), paging, filters, a
request's detail and ledger rows, and the CSV download, against the API's answers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from browser_kit import CHROMIUM, backend_of, run_driver
from console_ledger_helpers import chat, chats, signed_in
from fake_azure import content_filter_error, open_fake_azure
from harness import azure_deployment, open_gateway

from omixa.engine.money import format_usd
from omixa.storage import RequestLogFilter


async def test_the_request_feeds_refuse_what_they_must(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, key = await gw.funded_account("1.00")
        _, other_key = await gw.funded_account("1.00")
        assert await chat(gw.base_url, key, model="gpt-4o-mini") == 200
        assert await chat(gw.base_url, other_key, model="gpt-4o-mini") == 200
        await gw.flushed()
        api = {"Authorization": f"Bearer {other_key}"}
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            # Signed out: the feeds answer 401 in the API's envelope, the pages go to sign-in.
            for path in ("/requests/data", "/requests/data/req_x", "/requests/export"):
                refused = await client.get(path)
                assert refused.status_code == 401, path
                assert refused.json()["error"]["code"] == "invalid_api_key"
                assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
            away = await client.get("/requests", params={"model": "gpt-4o-mini"})
            assert (
                away.status_code == 302 and away.headers["location"] == "/signin?next=%2Frequests%3Fmodel%3Dgpt-4o-mini"
            )

            await signed_in(client, key)
            mine = (await client.get("/requests/data")).json()
            assert [r["key_id"] for r in mine["data"]] == [(await gw.engine.accounts.authenticate(f"Bearer {key}")).id]
            theirs = (await client.get(f"{gw.base_url}/usage/requests", headers=api)).json()["data"][0]["id"]
            # Someone else's request: 404, as an unknown one, on the feed and on the page.
            for path in (f"/requests/data/{theirs}", "/requests/data/req_unknown"):
                missing = await client.get(path)
                assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
            page = await client.get(f"/requests/{theirs}")
            assert page.status_code == 404 and "No such request" in page.text and theirs not in page.text
            # A cursor that is not one of the account's requests, bad filters, unknown names.
            for params, param in (
                ({"after": theirs}, None),
                ({"after": "req_unknown"}, None),
                ({"stream": "yes"}, "stream"),
                ({"key_id": "key_nope"}, "key_id"),
                ({"limit": "0"}, "limit"),
                ({"since": "2026-01-01T00:00:00Z"}, "since"),
            ):
                refused = await client.get("/requests/data", params=params)
                error = refused.json()["error"]
                assert refused.status_code == (404 if "after" in params else 400), params
                assert error["param"] == param, params
            assert (await client.get("/requests/export", params={"stream": "maybe"})).status_code == 400
            assert (await client.get("/requests/export", params={"after": "req_x"})).status_code == 400
        # The API refuses a bad stream flag alike.
        async with httpx.AsyncClient(base_url=gw.base_url, headers=api) as client:
            refused = await client.get("/usage/requests", params={"stream": "1"})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream"


DRIVER = Path(__file__).resolve().parent / "console_requests_driver.py"
MODELS = ("gpt-4o-mini", "gpt-4.1-nano")
REQUESTS = 250
REFUSED = 3  # more, refused by the upstream's content filter


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium)")
async def test_the_request_log_in_a_real_browser(database_url, tmp_path):
    async with (
        open_fake_azure(reply="A short answer.") as fake,
        open_gateway(
            database_url, fake, deployments=[azure_deployment(fake, name=f"d-{m}", model=m) for m in MODELS]
        ) as gw,
    ):
        account, key = await gw.funded_account("50.00")
        second = await gw.engine.accounts.create_key(account)
        _, other_key = await gw.funded_account("1.00")
        keys = [key, second.secret]
        plan = [(keys[i % 2], MODELS[0] if i % 5 else MODELS[1], i % 3 == 0) for i in range(REQUESTS)]
        assert set(await chats(gw.base_url, plan)) == {200}
        fake.fail_next(400, content_filter_error(), count=REFUSED)
        for i in range(REFUSED):
            assert await chat(gw.base_url, keys[i % 2], model=MODELS[0], stream=False) == 400
        assert await chat(gw.base_url, other_key, model=MODELS[0]) == 200
        await gw.flushed()
        await gw.settled_entries(account)
        key_ids = [(await gw.engine.accounts.authenticate(f"Bearer {k}")).id for k in keys]
        records = {k.id: k.prefix for k in await gw.engine.accounts.keys(account)}
        logs = await gw.storage.list_request_logs(RequestLogFilter(account_id=account, limit=1000))
        failed = [r for r in logs if r.status != "ok"]
        assert len(logs) == REQUESTS + REFUSED and len(failed) == REFUSED
        others = await gw.storage.list_request_logs(
            RequestLogFilter(
                account_id=(await gw.engine.accounts.authenticate(f"Bearer {other_key}")).account_id, limit=5
            )
        )
        status = failed[0].status
        filters = [
            {"model": MODELS[1]},
            {"key_id": key_ids[1]},
            {"status": status},
            {"stream": "true"},
            {"stream": "false", "model": MODELS[0], "key_id": key_ids[0]},
        ]
        seen = await run_driver(
            DRIVER,
            {
                "root": gw.root_url,
                "api": gw.base_url,
                "key": key,
                "prefixes": records,
                "filters": filters,
                "failed_id": failed[0].id,
                "other_id": others[0].id,
                "backend": backend_of(database_url),
                "tmp": str(tmp_path),
            },
            seconds=400,
        )
        # What the pages showed, against the logs and the ledger in the database.
        assert seen["log_rows"] == seen["csv_rows_all"] == len(logs)

        def matching(f):
            return [
                r for r in logs
                if r.model == f.get("model", r.model) and r.key_id == f.get("key_id", r.key_id)
                and r.status == f.get("status", r.status) and str(r.stream).lower() == f.get("stream", str(r.stream).lower())
            ]  # fmt: skip

        for f in filters:
            assert seen["filtered"][json.dumps(f, sort_keys=True)] == len(matching(f)) > 0, f
        ledger = await gw.storage.ledger_entries(account)
        for shown in (seen["detail"], seen["failed"]):
            rows = [e for e in ledger if e.request_id == shown["id"]]
            assert [(f"txn_{e.id}", e.type, format_usd(e.amount), format_usd(e.balance_after)) for e in rows] == [
                (r["id"], r["type"], r["amount"], r["balance_after"]) for r in shown["ledger"]
            ]
        assert [r["type"] for r in seen["detail"]["ledger"]][:2] == ["hold", "charge"]
        assert [r["type"] for r in seen["failed"]["ledger"]] == ["hold", "release"]
