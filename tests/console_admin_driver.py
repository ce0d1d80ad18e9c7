"""Drives /admin in headless Chromium for tests/test_console_admin.py (see tests/browser_kit.py
for why it is a process of its own). Arguments (JSON on stdin): root, chromium, token (the
admin token), key and account (a funded developer account and its key), backend. Prints what
it saw as JSON; every check is an assert."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
from browser_kit import axe_check, driver_main, shot
from playwright.sync_api import expect, sync_playwright

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
REQUESTS = 3


def requests_shown(page) -> int:
    return sum(int(t.replace(",", "")) for t in page.locator("#deployments-table td.requests").all_text_contents())


def drive(root: str, chromium: str, token: str, key: str, account: str, backend: str) -> dict:
    seen: dict = {}
    api = httpx.Client(base_url=f"{root}/api/v1", timeout=30, headers={"Authorization": f"Bearer {key}"})
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()

            # Its own sign-in; a wrong token is refused without saying why.
            page.goto(f"{root}/admin")
            expect(page).to_have_url(f"{root}/admin/signin")
            axe_check(browser, context, f"{root}/admin/signin", ready="#admin_token")
            page.fill("#admin_token", token + "-wrong")
            page.click("button[type=submit]")
            expect(page.locator("#admin-signin-error")).to_have_text("Sign-in refused.")
            page.fill("#admin_token", token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{root}/admin")
            cookie = next(c for c in context.cookies() if c["name"] == "omixa_admin")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
            assert cookie["expires"] > time.time() and token not in cookie["value"]

            # The deployments table follows the gateway's state without a reload.
            rows = page.locator("#deployments-table tbody tr")
            expect(rows).to_have_count(2)
            east = page.locator('#deployments-table tr[data-deployment="eastus-1"]')
            expect(east.locator(".health")).to_have_text("closed (healthy)")
            expect(east.locator(".windows")).to_contain_text("/ 1,000")
            before = requests_shown(page)
            page.evaluate("window.__noReload = true")
            for _ in range(REQUESTS):
                assert api.post("/chat/completions", json=CHAT).status_code == 200
            deadline = time.monotonic() + 15
            while requests_shown(page) < before + REQUESTS:
                assert time.monotonic() < deadline, f"the table shows {requests_shown(page)} requests"
                time.sleep(0.1)
            assert page.evaluate("window.__noReload") is True
            # The router spreads the requests over both deployments (all may go to either):
            # each one that served some shows its latency.
            for row in rows.all():
                if int((row.locator("td.requests").text_content() or "0").replace(",", "")):
                    expect(row.locator(".latency")).to_contain_text("ms")
            seen["requests"] = REQUESTS

            # Find the account by email; its wallet as the API shows it.
            expect(page.locator("#accounts-table tbody tr")).to_have_count(4)
            page.fill("#accounts-q", "DEV@")
            page.click("#accounts-search button[type=submit]")
            row = page.locator(f'#accounts-table tr[data-account-id="{account}"]')
            expect(page.locator("#accounts-table tbody tr")).to_have_count(1)
            wallet = api.get("/wallet").json()
            expect(row.locator(".balance .money")).to_have_attribute("data-exact", wallet["balance"])
            expect(row.locator(".balance .money")).to_have_attribute("title", f"${wallet['balance']} exactly")
            expect(row.locator(".available .money")).to_have_attribute("data-exact", wallet["available"])
            axe_check(browser, context, f"{root}/admin", ready="#deployments-table", settle="#accounts-table tbody tr")

            # Top it up; the balance follows, through the API too.
            row.locator("button.top-up").click()
            expect(page.locator("#top-up")).to_be_visible()
            expect(page.locator("#top-up-email")).to_have_text("dev@example.com")
            page.fill("#top-up-amount", "7.25")
            form: dict[str, str | float | bool] = {
                "csrf": page.locator("#top-up-form input[name=csrf]").input_value(),
                "account_id": account,
                "amount": "7.25",
                "idempotency_key": page.input_value("#top-up-key"),
            }
            page.click("#top-up-submit")
            # Nothing is credited before the confirmation, which names the amount and account.
            expect(page.locator("#top-up-confirm-text")).to_have_text("Credit $7.25 to dev@example.com?")
            assert api.get("/wallet").json()["balance"] == wallet["balance"]
            page.click("#top-up-confirm-yes")
            expect(page.locator("#top-up-result")).to_contain_text("Credited $7.25 as top_up txn_")
            expect(page.locator("#top-up-confirm")).to_be_hidden()
            after = api.get("/wallet").json()
            assert Decimal(after["balance"]) == Decimal(wallet["balance"]) + Decimal("7.25"), (after, wallet)
            expect(row.locator(".balance .money")).to_have_attribute("data-exact", after["balance"])
            assert page.input_value("#top-up-key") != form["idempotency_key"]  # a new form, a new key
            seen["credited"] = "7.25"
            shot(page, "console-admin", backend)

            # The same form again (a retry, a replay): answered, credited once.
            replay = page.request.post(f"{root}/admin/top-up", form=form)
            assert replay.status == 200 and replay.json()["replayed"] is True, replay.text()
            assert api.get("/wallet").json()["balance"] == after["balance"]
            # Without the CSRF token: refused.
            forged = page.request.post(f"{root}/admin/top-up", form={**form, "csrf": "", "idempotency_key": "k9"})
            assert forged.status == 400
            assert api.get("/wallet").json()["balance"] == after["balance"]

            # Sign out: back to the sign-in form, and /admin needs it again.
            page.click("#admin-signout")
            page.wait_for_url(f"{root}/admin/signin")
            page.goto(f"{root}/admin")
            expect(page).to_have_url(f"{root}/admin/signin")
        finally:
            browser.close()
    return seen


if __name__ == "__main__":
    driver_main(drive)
