"""Drives the dashboard in headless Chromium for tests/test_dashboard_browser.py.

Run as its own process (Playwright's sync API needs a plain asyncio loop, and the test
process runs trio-asyncio's): ``python browser_driver.py`` with a JSON object of arguments
on stdin; prints a JSON object of what it saw. Every check is an assert: a failure exits
non-zero with the traceback on stderr. Screenshots go to ``browser_kit.OUTPUT``.
"""

from __future__ import annotations

import subprocess

import httpx
from browser_kit import OMIXA, driver_main, shot, sign_in
from playwright.sync_api import expect, sync_playwright

MODEL = "gpt-4o-mini"


def drive(root: str, chromium: str, key_a: str, key_b: str, key_b_id: str, config: str, poll_seconds: float) -> dict:
    seen: dict = {}
    api = httpx.Client(base_url=f"{root}/api/v1", timeout=30)
    expect.set_options(timeout=15_000)  # not Playwright's 5 s: a loaded CI machine is slow
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()

            # A wrong key is refused on the page.
            page.goto(f"{root}/signin")
            page.fill("#api_key", "omx_live_not-a-real-key")
            page.click("button[type=submit]")
            expect(page.locator("#signin-error")).to_be_visible()
            shot(page, "01-signin-refused")

            sign_in(page, root, key_a)
            cookie = next(c for c in context.cookies() if c["name"] == "omixa_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert key_a not in cookie["value"]

            # The wallet tiles show the API's numbers.
            wallet = api.get("/wallet", headers={"Authorization": f"Bearer {key_a}"}).json()
            # Money shows 2 decimals there, the exact amount in data-exact (and on hover).
            expect(page.locator("#wallet-balance .money")).to_have_attribute("data-exact", wallet["balance"])
            expect(page.locator("#wallet-available .money")).to_have_attribute("data-exact", wallet["available"])

            # A request made through the API appears without a reload, within the poll.
            page.evaluate("window.__noReload = true")
            response = api.post(
                "/chat/completions",
                headers={"Authorization": f"Bearer {key_a}"},
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20},
            )
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            row = page.locator(f'tr[data-request-id="{request_id}"]')
            expect(row).to_be_visible(timeout=(poll_seconds + 3) * 1000)
            assert page.evaluate("window.__noReload") is True
            log = api.get(f"/usage/requests/{request_id}", headers={"Authorization": f"Bearer {key_a}"}).json()
            expect(row.locator(".money")).to_have_attribute("data-exact", log["cost"])
            rollups = api.get("/usage/rollups", headers={"Authorization": f"Bearer {key_a}"}).json()
            assert len(rollups["data"]) == 1 and rollups["data"][0]["cost"] == log["cost"]
            expect(page.locator("#total-cost .money")).to_have_attribute("data-exact", log["cost"])
            expect(page.locator("#total-requests")).to_have_text("1")
            expect(page.locator("#chart-cost canvas")).to_have_count(1)
            expect(page.locator("#chart-tokens canvas")).to_have_count(1)
            expect(page.locator("#models-table")).to_contain_text(MODEL)
            new_balance = api.get("/wallet", headers={"Authorization": f"Bearer {key_a}"}).json()["balance"]
            expect(page.locator("#wallet-balance .money")).to_have_attribute("data-exact", new_balance)
            page.click("[data-range='30d']")
            expect(page.locator("[data-range='30d']")).to_have_attribute("aria-pressed", "true")
            expect(page.locator("#range-label")).to_contain_text("daily buckets")
            expect(page.locator("#total-requests")).to_have_text("1")
            page.click("[data-range='24h']")
            expect(page.locator("#range-label")).to_contain_text("hourly buckets")
            shot(page, "02-usage")
            seen["request_id"] = request_id

            # A phone-width view.
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            # Playwright returns Cookie and takes SetCookieParam: the same keys, typed apart.
            phone.add_cookies(context.cookies())  # type: ignore[arg-type]
            phone_page = phone.new_page()
            phone_page.goto(f"{root}/usage")
            now_balance = api.get("/wallet", headers={"Authorization": f"Bearer {key_a}"}).json()["balance"]
            expect(phone_page.locator("#wallet-balance .money")).to_have_attribute("data-exact", now_balance)
            assert phone_page.evaluate("document.documentElement.scrollWidth") <= 390
            shot(phone_page, "06-usage-phone")
            phone.close()

            # Another account sees none of it.
            other = browser.new_context(viewport={"width": 1280, "height": 900})
            other_page = other.new_page()
            sign_in(other_page, root, key_b)
            expect(other_page.locator("#latest-table")).to_contain_text("No requests in this range.")
            expect(other_page.locator("#wallet-balance")).to_have_text("$3.00")
            expect(other_page.locator("#total-requests")).to_have_text("0")
            assert request_id not in other_page.content()
            status = other_page.evaluate(  # evaluate() has no timeout of its own: give it one
                f"Promise.race([fetch('/usage/data/requests/{request_id}').then(r => r.status),"
                " new Promise(done => setTimeout(() => done('no answer in 10 s'), 10000))])"
            )
            assert status == 404, status
            shot(other_page, "07-other-account")

            # Revoking a key ends its sessions at once; signing out ends this one.
            revoked = subprocess.run(
                [OMIXA, "key", "revoke", key_b_id, "--config", config], capture_output=True, text=True, timeout=60
            )
            assert revoked.returncode == 0, revoked.stderr
            # The open page's next poll gets 401 and it goes to the sign-in page by itself (a
            # navigation of ours started meanwhile would be cut short: wait for it first).
            other_page.wait_for_url(f"{root}/signin?next=/usage", timeout=(poll_seconds + 10) * 1000)
            other_page.goto(f"{root}/usage")
            assert other_page.url.startswith(f"{root}/signin")
            other.close()
            page.click("button:has-text('Sign out')")
            page.wait_for_url(f"{root}/signin")
            page.goto(f"{root}/usage")
            assert page.url.startswith(f"{root}/signin")
        finally:
            browser.close()
            api.close()
    return seen


if __name__ == "__main__":
    driver_main(drive)
