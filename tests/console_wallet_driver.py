"""Drives /wallet in headless Chromium for tests/test_console_wallet.py.

Run as its own process (see tests/browser_kit.py): a JSON object of arguments on stdin (root
and key of a gateway with self top-up on, and of one with it off; backend); prints a JSON
object of what it saw. Every number is checked against the API's answers for the same key.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal

import httpx
from browser_kit import axe_check, shot, sign_in
from playwright.sync_api import expect, sync_playwright

PAGE = 25  # transactions per page


def api_client(root: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=f"{root}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60)


def api_transactions(api: httpx.Client) -> list[list[dict]]:
    pages, after = [], None
    while True:
        body = api.get(
            "/wallet/transactions", params={"limit": str(PAGE), **({"after": after} if after else {})}
        ).json()
        pages.append(body["data"])
        if not body["has_more"]:
            return pages
        after = body["last_id"]


def shown_transactions(page) -> list[dict]:
    return page.locator("#transactions-table tbody tr[data-transaction]").evaluate_all(
        """rows => rows.map(r => ({id: r.dataset.transaction, type: r.cells[2].textContent,
             amount: r.cells[3].querySelector('.money').dataset.exact,
             balance_after: r.cells[4].querySelector('.money').dataset.exact,
             request: r.cells[5].querySelector('a') ? r.cells[5].querySelector('a').getAttribute('href') : null,
             created_at: r.cells[0].querySelector('time').getAttribute('datetime')}))"""
    )


def as_shown(t: dict) -> dict:
    request = f"/requests/{t['request_id']}" if t["request_id"] else None
    return {"id": t["id"], "type": t["type"], "amount": t["amount"], "balance_after": t["balance_after"],
            "request": request, "created_at": t["created_at"]}  # fmt: skip


def check_wallet(page, api: httpx.Client) -> dict:
    """The tiles and the chart's last point against GET /api/v1/wallet (nothing in flight)."""
    wallet = api.get("/wallet").json()
    for tile, field in (("balance", "balance"), ("locked", "locked_balance"), ("available", "available")):
        expect(page.locator(f"#wallet-{tile} .money")).to_have_attribute("data-exact", wallet[field])
    expect(page.locator("#chart-balance")).to_have_attribute("data-last-balance", wallet["balance"])
    return wallet


def check_transactions(page, api: httpx.Client) -> int:
    """Every page of transactions as the API pages them; back on page 1 after."""
    expected = api_transactions(api)
    expect(page.locator("#page-label")).to_have_text("Page 1")
    expect(page.locator("#transactions-table tbody tr[data-transaction]").first).to_have_attribute(
        "data-transaction", expected[0][0]["id"]
    )
    for number, rows in enumerate(expected, start=1):
        if number > 1:
            page.click("#page-older")
            expect(page.locator("#page-label")).to_have_text(f"Page {number}")
        assert shown_transactions(page) == [as_shown(t) for t in rows], number
    assert page.locator("#page-older").is_disabled()
    for number in range(len(expected) - 1, 0, -1):
        page.click("#page-newer")
        expect(page.locator("#page-label")).to_have_text(f"Page {number}")
    return sum(len(p) for p in expected)


def drive(args: dict) -> dict:
    root, backend = args["root"], args["backend"]
    api = api_client(root, args["key"])
    seen: dict = {}
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args["chromium"], args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="America/New_York")
            page = context.new_page()
            sign_in(page, root, args["key"], "/wallet")
            expect(page.locator("#transactions-table thead .zone")).to_contain_text("America/New_York")
            before = check_wallet(page, api)
            chart = page.locator("#chart-balance")
            expect(chart).to_have_attribute("data-points", "24")
            assert int(chart.get_attribute("data-ticks") or 0) >= 6  # five intervals or more, labelled
            labels = json.loads(chart.get_attribute("data-y-labels") or "[]")
            assert len(labels) >= 5 and all(labels), labels
            # Hovering the last hour shows the balance exactly, as the API gives it.
            over = page.locator("#chart-balance .u-over")
            box = over.bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
            expect(page.locator("#chart-balance .chart-tip")).to_contain_text(f"${before['balance']}")
            page.mouse.move(0, 0)
            seen["transactions"] = check_transactions(page, api)
            # A request's row links to its detail.
            link = page.locator("#transactions-table tbody a").first
            assert re.fullmatch(r"/requests/req_[0-9a-f]+", link.get_attribute("href") or "")

            # A refused amount: the form again, with the reason.
            page.fill("#top-up-amount", "0.10")
            page.click("#top-up-submit")
            expect(page.locator("#top-up-error")).to_contain_text("amount must be between 1.00 and 1000.00")
            expect(page.locator("#top-up-amount")).to_have_value("0.10")

            # A top-up, clicked twice: credited once.
            page.fill("#top-up-amount", "12.34")
            fields = {name: page.locator(f"#top-up-form input[name={name}]").get_attribute("value") or ""
                      for name in ("csrf", "idempotency_key")}  # fmt: skip
            page.dblclick("#top-up-submit")
            page.wait_for_url(re.compile(r".*/wallet\?top_up=txn_\d+$"))
            txn = page.url.rsplit("=", 1)[1]
            expect(page.locator("#top-up-notice")).to_contain_text("Added $12.34")
            after = check_wallet(page, api)
            assert Decimal(after["balance"]) == Decimal(before["balance"]) + Decimal("12.34")
            first = api_transactions(api)[0][0]
            assert (first["id"], first["type"], first["amount"]) == (txn, "top_up", "12.34")
            expect(page.locator("#transactions-table tbody tr").first).to_have_attribute("data-transaction", txn)
            seen["transactions_after"] = check_transactions(page, api)
            # The same form sent again (a resent POST): the same transaction, nothing more credited.
            again = context.request.post(f"{root}/wallet/top-up", form={**fields, "amount": "12.34"}, max_redirects=0)
            assert again.status == 302 and again.headers["location"] == f"/wallet?top_up={txn}&replayed=true"
            page.goto(f"{root}{again.headers['location']}")
            expect(page.locator("#top-up-notice")).to_contain_text("credited once")
            assert check_wallet(page, api)["balance"] == after["balance"]
            # Sent again with another amount: refused, nothing credited.
            other = context.request.post(f"{root}/wallet/top-up", form={**fields, "amount": "50.00"}, max_redirects=0)
            assert other.status == 409 and "already used" in other.text()
            assert api.get("/wallet").json()["balance"] == after["balance"]
            seen["txn"] = txn
            seen["balance"] = after["balance"]

            page.goto(f"{root}/wallet")
            check_wallet(page, api)
            shot(page, "console-wallet", backend)
            axe_check(browser, context, f"{root}/wallet", settle="#transactions-table tbody tr[data-transaction]")
            page.click("[data-granularity=day]")
            expect(chart).to_have_attribute("data-points", "30")
            expect(chart).to_have_attribute("data-last-balance", after["balance"])

            # A gateway without self top-up: no form, and why.
            off = browser.new_context(viewport={"width": 1280, "height": 900})
            off_page = off.new_page()
            sign_in(off_page, args["off_root"], args["off_key"], "/wallet")
            expect(off_page.locator("#top-up-off")).to_contain_text("turned off")
            assert off_page.locator("#top-up-form").count() == 0
            check_wallet(off_page, api_client(args["off_root"], args["off_key"]))
            axe_check(
                browser, off, f"{args['off_root']}/wallet", settle="#transactions-table tbody tr[data-transaction]"
            )
        finally:
            browser.close()
    return seen


if __name__ == "__main__":
    sys.stdout.write(json.dumps(drive(json.load(sys.stdin))))
