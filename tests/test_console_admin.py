"""/admin, the operator console: over plain HTTP (no token configured: no such page; the
sign-in and its refusals; the feeds; the top-up and its idempotency) and in a real browser
(tests/console_admin_driver.py), each on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import httpx
import pytest
from browser_kit import CHROMIUM, backend_of, run_driver
from fake_azure import open_fake_azure
from harness import azure_deployment, open_gateway
from storage_helpers import raw
from test_console_keys import signed_in

from omixa.storage import RequestLogFilter
from omixa.web.http.console_admin import SignInThrottle

ADMIN = "operator-token-for-tests"
DRIVER = Path(__file__).resolve().parent / "console_admin_driver.py"


async def admin_signed_in(client: httpx.AsyncClient, token: str = ADMIN) -> httpx.Response:
    form = await client.get("/admin/signin")
    assert form.status_code == 200 and "default-src 'self'" in form.headers["content-security-policy"]
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    return await client.post("/admin/signin", data={"token": token, "csrf": csrf[1]})


async def admin_csrf(client: httpx.AsyncClient) -> str:
    page = await client.get("/admin")
    assert page.status_code == 200
    found = re.search(r'data-csrf="([^"]+)"', page.text)
    assert found is not None
    return found[1]


def test_the_sign_in_throttle_counts_refusals_per_address_over_a_window():
    throttle = SignInThrottle(limit=3, window=60.0, addresses=2)
    for at in (0.0, 10.0):
        throttle.refused("a", at)
    assert throttle.wait("a", 20.0) == 0.0  # two refusals: not yet
    throttle.refused("a", 20.0)
    assert throttle.wait("a", 30.0) == 30.0  # three: until the first is a minute old
    assert throttle.wait("b", 30.0) == 0.0  # another address is not held back
    assert throttle.wait("a", 60.0) == 0.0  # the first left the window
    throttle.refused("b", 61.0)
    throttle.refused("c", 62.0)  # a third address: the stalest ("a") is forgotten
    assert throttle.wait("a", 62.0) == 0.0 and set(throttle._refused) == {"b", "c"}


async def test_guessing_the_admin_token_is_throttled(database_url, monkeypatch):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            for _ in range(5):
                assert (await admin_signed_in(client, "a-guess")).status_code == 401
            # The sixth try from this address is not even compared, the right token neither.
            held = await admin_signed_in(client)
            assert held.status_code == 429 and "Too many refused sign-ins" in held.text
            assert 0 < int(held.headers["retry-after"]) <= 900
            assert "omixa_admin" not in held.cookies
            assert (await client.get("/admin")).headers["location"] == "/admin/signin"


async def test_admin_follows_its_token_alone_when_the_developers_pages_are_off(tmp_path, monkeypatch):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    database_url = f"sqlite:///{tmp_path / 'omixa.db'}"
    async with open_fake_azure() as fake, open_gateway(database_url, fake, dashboard={"enabled": False}) as gw:
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            for path in ("/usage", "/signin", "/keys", "/usage/data"):
                assert (await client.get(path)).status_code == 404, path
            assert (await admin_signed_in(client)).status_code == 302
            assert (await client.get("/admin")).status_code == 200
            # The pages' icon is served from memory, and /favicon.ico points to it.
            icon = await client.get("/favicon.svg")
            assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
            assert icon.content.startswith(b"<svg")
            assert (await client.get("/favicon.ico")).headers["location"] == "/favicon.svg"
    monkeypatch.delenv("OMIXA_ADMIN_TOKEN")
    async with open_fake_azure() as fake, open_gateway(database_url, fake, dashboard={"enabled": False}) as gw:
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            for path in ("/admin", "/admin/signin", "/usage"):
                assert (await client.get(path)).status_code == 404, path


async def test_admin_answers_404_without_a_token(database_url, monkeypatch):
    monkeypatch.delenv("OMIXA_ADMIN_TOKEN", raising=False)
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            for path in ("/admin", "/admin/signin", "/admin/data/deployments", "/admin/data/accounts"):
                answer = await client.get(path)
                assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", path
            for path in ("/admin/signin", "/admin/signout", "/admin/top-up"):
                answer = await client.post(path, data={"token": "", "csrf": ""})
                assert answer.status_code == 404, path


async def test_admin_signin_feeds_and_top_up_over_http(database_url, monkeypatch, aio_loop):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        accounts = gw.engine.accounts
        first = await accounts.create_account("first@alpha.example")
        second = await accounts.create_account("Second@Beta.example")
        third = await accounts.create_account("third_100%@beta.example")
        _, dev_key = await gw.funded_account("1.00")
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            # Signed out: the page sends to its sign-in, the feeds and posts are refused.
            away = await client.get("/admin")
            assert away.status_code == 302 and away.headers["location"] == "/admin/signin"
            for path in ("/admin/data/deployments", "/admin/data/accounts"):
                refused = await client.get(path)
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            refused = await client.post("/admin/top-up", data={"account_id": first.id, "amount": "1"})
            assert refused.status_code == 401

            # A developer's session is not an operator's.
            await signed_in(client, dev_key)
            assert (await client.get("/admin")).status_code == 302
            assert (await client.get("/admin/data/accounts")).status_code == 401

            # Sign-in: the form's token is required; a wrong admin token gets no hint.
            forged = await client.post("/admin/signin", data={"token": ADMIN, "csrf": "guess"})
            assert forged.status_code == 400 and "omixa_admin" not in forged.cookies
            for wrong in ("", "operator", ADMIN + "x", ADMIN.upper()):
                refused = await admin_signed_in(client, wrong)
                assert refused.status_code == 401 and "omixa_admin" not in refused.cookies
                assert re.search(r'id="admin-signin-error">Sign-in refused\.<', refused.text)
            ok = await admin_signed_in(client)
            assert ok.status_code == 302 and ok.headers["location"] == "/admin"
            cookie = ok.headers["set-cookie"]
            assert "omixa_admin=" in cookie and ADMIN not in cookie
            assert all(part in cookie for part in ("HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=43200"))
            csrf = await admin_csrf(client)

            deployments = (await client.get("/admin/data/deployments")).json()["data"]
            async with httpx.AsyncClient(base_url=gw.root_url, headers={"Authorization": f"Bearer {ADMIN}"}) as api:
                same = (await api.get("/admin/deployments")).json()["data"]
            assert [d["name"] for d in deployments] == [d["name"] for d in same] == ["eastus-1"]
            assert deployments[0].keys() == same[0].keys()

            # Accounts: newest first, searched by email (case-insensitive, % and _ as is), paged.
            listed = (await client.get("/admin/data/accounts")).json()
            ids = [a["id"] for a in listed["data"]]
            assert ids[1:] == [third.id, second.id, first.id] and not listed["has_more"]
            found = (await client.get("/admin/data/accounts", params={"q": "BETA.example"})).json()["data"]
            assert [a["id"] for a in found] == [third.id, second.id]
            found = (await client.get("/admin/data/accounts", params={"q": "_100%"})).json()["data"]
            assert [a["id"] for a in found] == [third.id]
            assert (await client.get("/admin/data/accounts", params={"q": "a%b"})).json()["data"] == []
            page = (await client.get("/admin/data/accounts", params={"limit": "2"})).json()
            assert [a["id"] for a in page["data"]] == ids[:2] and page["has_more"]
            rest = (await client.get("/admin/data/accounts", params={"limit": "2", "after": ids[1]})).json()
            assert [a["id"] for a in rest["data"]] == ids[2:] and not rest["has_more"]
            assert (await client.get("/admin/data/accounts", params={"limit": "0"})).status_code == 400
            assert (await client.get("/admin/data/accounts", params={"limit": "x"})).status_code == 400
            balances = {a["id"]: a for a in listed["data"]}
            assert balances[ids[0]]["balance"] == "1.00" and balances[first.id]["available"] == "0.00"

            # Top-up: CSRF-checked; once per idempotency key; refused amounts credit nothing.
            form = {"account_id": first.id, "amount": "12.50", "idempotency_key": "console-1"}
            assert (await client.post("/admin/top-up", data=form)).status_code == 400
            assert (await client.post("/admin/top-up", data={**form, "csrf": "guess"})).status_code == 400
            credited = await client.post("/admin/top-up", data={**form, "csrf": csrf})
            assert credited.status_code == 201, credited.text
            body = credited.json()
            assert body["replayed"] is False and body["wallet"]["balance"] == "12.50"
            assert body["transaction"]["type"] == "top_up" and body["transaction"]["amount"] == "12.50"
            again = await client.post("/admin/top-up", data={**form, "csrf": csrf})
            assert again.status_code == 200 and again.json()["replayed"] is True
            assert again.json()["transaction"]["id"] == body["transaction"]["id"]
            other = await client.post("/admin/top-up", data={**form, "amount": "13", "csrf": csrf})
            assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
            # Above the console's limit per top-up (dashboard.operator_top_up_max_usd, 10,000).
            over = await client.post(
                "/admin/top-up", data={**form, "amount": "10000.01", "idempotency_key": "k-over", "csrf": csrf}
            )
            assert over.status_code == 400 and "operator_top_up_max_usd" in over.json()["error"]["message"]
            for amount in ("0", "-1", "abc", "1.0000000001", ""):
                bad = await client.post(
                    "/admin/top-up", data={**form, "amount": amount, "idempotency_key": f"k-{amount}", "csrf": csrf}
                )
                assert bad.status_code == 400 and bad.json()["error"]["param"] == "amount", amount
            no_key = await client.post("/admin/top-up", data={**form, "idempotency_key": "", "csrf": csrf})
            assert no_key.status_code == 400
            missing = await client.post(
                "/admin/top-up", data={**form, "account_id": "acct_missing", "idempotency_key": "k2", "csrf": csrf}
            )
            assert missing.status_code == 404
            assert (await gw.storage.get_wallet(first.id)).balance == 12_500_000_000

            # Signing out ends the session on the server: a copy of the cookie stops working.
            copy = client.cookies.get("omixa_admin", domain="", path="/admin")
            out = await client.post("/admin/signout", data={"csrf": csrf})
            assert out.status_code == 302 and out.headers["location"] == "/admin/signin"
        async with httpx.AsyncClient(base_url=gw.root_url) as stolen:
            stolen.cookies.set("omixa_admin", copy, path="/admin")
            assert (await stolen.get("/admin/data/accounts")).status_code == 401
            assert (await stolen.get("/admin")).status_code == 302
        assert await gw.storage.verify_ledger() == []
    rows = await raw(database_url, aio_loop, f"SELECT type, amount, note FROM ledger WHERE account_id = '{first.id}'")
    assert rows == [("top_up", 12_500_000_000, "operator top-up (console)")]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium)")
async def test_admin_page_in_a_real_browser(database_url, monkeypatch, aio_loop):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    async with (
        open_fake_azure() as fake,
        open_gateway(
            database_url,
            fake,
            deployments=[azure_deployment(fake, name="eastus-1", rpm=1000), azure_deployment(fake, name="westus-2")],
            dashboard={"poll_seconds": 1.0},
        ) as gw,
    ):
        for n in range(3):
            await gw.engine.accounts.create_account(f"filler{n}@example.com")
        account, key = await gw.funded_account("2.00")
        seen = await run_driver(
            DRIVER,
            {"root": gw.root_url, "token": ADMIN, "key": key, "account": account, "backend": backend_of(database_url)},
        )
        assert seen["credited"] == "7.25"
        entries = await gw.settled_entries(account)
        top_ups = [e for e in entries if e.type == "top_up"]
        assert [e.amount for e in top_ups] == [2_000_000_000, 7_250_000_000]  # the replay credited nothing
        assert await gw.storage.verify_ledger() == []
        await gw.flushed()
        logs = await gw.storage.list_request_logs(RequestLogFilter(account_id=account, limit=100))
        assert len(logs) == seen["requests"]
    rows = await raw(
        database_url, aio_loop, f"SELECT note FROM ledger WHERE account_id = '{account}' AND type = 'top_up'"
    )
    assert sorted(r[0] or "" for r in rows) == ["", "operator top-up (console)"]


async def test_operator_sessions_expire_and_end_in_storage(storage):
    now = dt.datetime.now(dt.UTC)
    await storage.create_admin_session("old", now - dt.timedelta(seconds=1))
    await storage.create_admin_session("live", now + dt.timedelta(hours=1))
    assert not await storage.admin_session_live("old")
    assert await storage.admin_session_live("live")
    assert not await storage.admin_session_live("unknown")
    await storage.end_admin_session("live")
    await storage.end_admin_session("live")  # gone already: a no-op
    assert not await storage.admin_session_live("live")
