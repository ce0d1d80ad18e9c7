"""The request log pages (/requests, /requests/<id>) and their feeds: over plain HTTP, what
they refuse; in a real browser (tests/console_requests_driver.py), paging, filters, a
request's detail and ledger rows, and the CSV download, against the API's answers."""

from __future__ import annotations

import httpx
from console_ledger_helpers import chat, signed_in
from fake_azure import open_fake_azure
from harness import open_gateway


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
            assert away.status_code == 302 and away.headers["location"] == "/signin?next=%2Frequests%3Fmodel%3Dgpt-4o-mini"

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
