"""The wallet page (/wallet) and its feeds: over plain HTTP, what they refuse; in a real
browser (tests/console_wallet_driver.py), the tiles, chart and transactions against the API,
a top-up (sent twice, credited once), and the page without self top-up."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from browser_kit import CHROMIUM, backend_of, run_driver
from console_ledger_helpers import chat, chats, signed_in
from fake_azure import open_fake_azure
from harness import open_gateway

from omixa.engine.money import format_usd

SELF_TOP_UP = {"self_top_up": True, "top_up_min_usd": "1.00", "top_up_max_usd": "1000.00"}
DRIVER = Path(__file__).resolve().parent / "console_wallet_driver.py"


async def test_the_wallet_feeds_and_top_up_refuse_what_they_must(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, wallet=SELF_TOP_UP) as gw:
        account, key = await gw.funded_account("5.00")
        other, _ = await gw.funded_account("1.00")
        assert await chat(gw.base_url, key, model="gpt-4o-mini") == 200
        await gw.settled_entries(account)
        theirs = (await gw.storage.ledger_entries(other))[0].id
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            for path in ("/wallet/data", "/wallet/data/transactions"):
                refused = await client.get(path)
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", path
            refused = await client.post("/wallet/top-up", data={"amount": "5.00", "csrf": "x"})
            assert (
                refused.status_code == 401 and refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
            )
            away = await client.get("/wallet")
            assert away.status_code == 302 and away.headers["location"] == "/signin?next=%2Fwallet"

            csrf = await signed_in(client, key)
            data = (await client.get("/wallet/data")).json()
            assert data["wallet"]["balance"] == format_usd((await gw.storage.get_wallet(account)).balance)
            assert (
                len(data["balance_history"]) == 24
                and data["balance_history"][-1]["balance"] == data["wallet"]["balance"]
            )
            assert (
                len((await client.get("/wallet/data", params={"granularity": "day"})).json()["balance_history"]) == 30
            )
            # Bad cursors: not a transaction id, or another account's.
            for after in ("txn_abc", "12", f"txn_{theirs}"):
                missing = await client.get("/wallet/data/transactions", params={"after": after})
                assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found", after
            for params, param in (
                ({"granularity": "week"}, "granularity"),
                ({"limit": "101"}, "limit"),
                ({"page": "2"}, "page"),
            ):
                refused = await client.get(
                    "/wallet/data" if "granularity" in params else "/wallet/data/transactions", params=params
                )
                assert refused.status_code == 400 and refused.json()["error"]["param"] == param, params
            # A top-up without the session's CSRF token, or with another: 400, nothing credited.
            page = await client.get("/wallet")
            form_key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text)[1]
            for token in (None, "forged"):
                fields = {"amount": "5.00", "idempotency_key": form_key, **({"csrf": token} if token else {})}
                refused = await client.post("/wallet/top-up", data=fields)
                assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request"
            assert (await gw.storage.get_wallet(account)).balance < 5 * 10**9
            # Refused amounts show the form again with the reason (and the same key).
            for amount in ("0.50", "abc", "1000.01"):
                shown = await client.post(
                    "/wallet/top-up", data={"amount": amount, "idempotency_key": form_key, "csrf": csrf}
                )
                assert shown.status_code == 400 and 'role="alert"' in shown.text and form_key in shown.text, amount
            # A post without the form's idempotency key (not this page's form): refused, nothing
            # credited; a hand-edited notice link shows the page without a notice.
            keyless = await client.post("/wallet/top-up", data={"amount": "5.00", "csrf": csrf})
            assert keyless.status_code == 400 and "idempotency key" in keyless.text
            assert (await client.get("/wallet?top_up=not-a-transaction")).status_code == 200
            # The form's top-up, sent twice: one credit.
            fields = {"amount": "5.00", "idempotency_key": form_key, "csrf": csrf}
            first, second = [await client.post("/wallet/top-up", data=fields) for _ in range(2)]
            assert first.status_code == second.status_code == 302
            txn = first.headers["location"].removeprefix("/wallet?top_up=")
            assert second.headers["location"] == f"/wallet?top_up={txn}&replayed=true"
            top_ups = [e for e in await gw.storage.ledger_entries(account) if e.type == "top_up"]
            assert len(top_ups) == 2 and f"txn_{top_ups[-1].id}" == txn and format_usd(top_ups[-1].amount) == "5.00"
        assert await gw.storage.verify_ledger() == []

    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("5.00")
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            csrf = await signed_in(client, key)
            page = await client.get("/wallet")
            assert 'id="top-up-off"' in page.text and "top-up-form" not in page.text
            refused = await client.post("/wallet/top-up", data={"amount": "5.00", "idempotency_key": "k", "csrf": csrf})
            assert refused.status_code == 403 and 'id="top-up-off"' in refused.text
        assert format_usd((await gw.storage.get_wallet(account)).balance) == "5.00"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium)")
async def test_the_wallet_in_a_real_browser(database_url, tmp_path):
    async with (
        open_fake_azure(reply="A short answer.") as fake,
        open_gateway(database_url, fake, wallet=SELF_TOP_UP) as gw,
        open_gateway(database_url, fake) as off,
    ):
        account, key = await gw.funded_account("20.00")
        # Ten requests: a hold, a charge and a release each (or no release when the charge
        # takes the whole hold), so with the first top-up two pages of 25.
        assert set(await chats(gw.base_url, [(key, "gpt-4o-mini", i % 2 == 0) for i in range(10)])) == {200}
        await gw.settled_entries(account)
        off_account, off_key = await off.funded_account("3.00")
        seen = await run_driver(
            DRIVER,
            {
                "root": gw.root_url,
                "key": key,
                "off_root": off.root_url,
                "off_key": off_key,
                "backend": backend_of(database_url),
            },
        )
        ledger = await gw.storage.ledger_entries(account)
        assert seen["transactions"] == len(ledger) - 1 > 25
        assert seen["transactions_after"] == len(ledger)
        top_ups = [e for e in ledger if e.type == "top_up"]
        assert len(top_ups) == 2 and f"txn_{top_ups[-1].id}" == seen["txn"]
        assert format_usd(top_ups[-1].amount) == "12.34"
        assert format_usd((await gw.storage.get_wallet(account)).balance) == seen["balance"]
        assert format_usd((await off.storage.get_wallet(off_account)).balance) == "3.00"
        assert await gw.storage.verify_ledger() == []
