"""Drives /requests and /requests/<id> in headless Chromium for tests/test_console_requests.py.

Run as its own process (see tests/browser_kit.py): a JSON object of arguments on stdin
(root, api, key, key ids and prefixes, backend); prints a JSON object of what it saw. Every
check is an assert against the API's own answers for the same key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
from browser_kit import axe_check, shot, sign_in
from playwright.sync_api import expect, sync_playwright

PAGE = 50  # rows per page of the log


def api_pages(api: httpx.Client, filters: dict[str, str]) -> list[list[str]]:
    """The request ids of every page of /api/v1/usage/requests with ``filters``, 50 a page."""
    pages, after = [], None
    while True:
        params = {**filters, "limit": str(PAGE), **({"after": after} if after else {})}
        body = api.get("/usage/requests", params=params).json()
        pages.append([r["id"] for r in body["data"]])
        if not body["has_more"]:
            return pages
        after = body["last_id"]


def shown_ids(page) -> list[str]:
    return page.locator("#requests-table tbody tr[data-request-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.requestId)"
    )


def page_through(page) -> list[list[str]]:
    """Every page of the log as shown, following the Older button; then back to page 1."""
    pages = []
    expect(page.locator("#log-status")).to_contain_text("on this page")
    while True:
        pages.append(shown_ids(page))
        older = page.locator("#page-older")
        if older.is_disabled():
            break
        older.click()
        expect(page.locator("#page-label")).to_have_text(f"Page {len(pages) + 1}")
        expect(page.locator("#log-status")).to_contain_text("on this page")
    # Back to the newest, one page at a time.
    for number in range(len(pages) - 1, 0, -1):
        page.locator("#page-newer").click()
        expect(page.locator("#page-label")).to_have_text(f"Page {number}")
        assert shown_ids(page) == pages[number - 1]
    assert page.locator("#page-newer").is_disabled()
    assert shown_ids(page) == pages[0]
    return pages


def apply_filters(page, root: str, filters: dict[str, str]) -> None:
    """Sets the filter form to ``filters`` (the rest to any) and applies it."""
    page.select_option("#filter-model", filters.get("model", ""))
    page.select_option("#filter-key", filters.get("key_id", ""))
    page.fill("#filter-status", filters.get("status", ""))
    page.select_option("#filter-stream", filters.get("stream", ""))
    page.click("#filters button[type=submit]")
    page.wait_for_url(lambda url: url.startswith(f"{root}/requests?"))
    expect(page.locator("#log-status")).to_contain_text("on this page")


def download(page, api: httpx.Client, filters: dict[str, str], tmp: Path) -> int:
    """Downloads the CSV of the page's filters and compares it with the API's, byte for byte;
    its number of rows."""
    link = page.locator("#download-csv")
    href = urlsplit(link.get_attribute("href"))
    assert href.path == "/requests/export" and dict(parse_qsl(href.query)) == filters, href
    with page.expect_download() as started:
        link.click()
    saved = tmp / started.value.suggested_filename
    started.value.save_as(saved)
    assert saved.name.startswith("omixa-requests-") and saved.suffix == ".csv"
    theirs = api.get("/usage/requests", params={**filters, "format": "csv"})
    assert theirs.status_code == 200
    mine = saved.read_bytes()
    assert mine == theirs.content, (len(mine), len(theirs.content))
    return mine.count(b"\r\n") - 1


def check_detail(page, api: httpx.Client, request_id: str, key_prefix: str) -> list[dict]:
    """The detail page of ``request_id`` against the API's view; its ledger rows as shown."""
    view = api.get(f"/usage/requests/{request_id}").json()
    expect(page.locator("#request-detail")).to_have_attribute("data-loaded", "true")
    text = lambda name: page.locator(f"#f-{name}").text_content()  # noqa: E731
    assert page.locator("#f-created_at time").get_attribute("datetime") == view["created_at"]
    assert text("status") == view["status"]
    for name in ("model", "provider"):
        assert text(name) == view[name], name
    assert text("region") == (view["region"] or "–")
    assert text("key_id") == f"{view['key_id']} ({key_prefix}…)"
    assert text("stream") == ("yes" if view["stream"] else "no")
    for name in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens"):
        assert text(name) == f"{view[name]:,}", name
    assert page.locator("#f-cost .money").get_attribute("data-exact") == view["cost"]
    assert page.locator("#f-cost .money").get_attribute("title") == f"${view['cost']} exactly"
    assert text("latency_ms") == f"{view['latency_ms']:,} ms"
    assert text("ttft_ms") == ("–" if view["ttft_ms"] is None else f"{view['ttft_ms']:,} ms")
    assert text("upstream_request_id") == (view["upstream_request_id"] or "–")
    # The ledger rows: those of the API's transactions list that name this request.
    rows = page.locator("#ledger-table tbody tr[data-transaction]").evaluate_all(
        """rows => rows.map(r => ({id: r.dataset.transaction, type: r.cells[2].textContent,
             amount: r.cells[3].querySelector('.money').dataset.exact,
             balance_after: r.cells[4].querySelector('.money').dataset.exact,
             locked_after: r.cells[5].querySelector('.money').dataset.exact,
             created_at: r.cells[0].querySelector('time').getAttribute('datetime')}))"""
    )
    listed, after = [], None
    while True:
        body = api.get("/wallet/transactions", params={"limit": "100", **({"after": after} if after else {})}).json()
        listed += [t for t in body["data"] if t["request_id"] == request_id]
        if not body["has_more"]:
            break
        after = body["last_id"]
    expected = [
        {k: t[k] for k in ("id", "type", "amount", "balance_after", "locked_after", "created_at")}
        for t in reversed(listed)
    ]
    assert rows == expected, (rows, expected)
    return rows


def drive(args: dict) -> dict:
    root, backend = args["root"], args["backend"]
    tmp = Path(args["tmp"])
    api = httpx.Client(base_url=args["api"], headers={"Authorization": f"Bearer {args['key']}"}, timeout=60)
    seen: dict = {}
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args["chromium"], args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900}, timezone_id="Europe/Paris",
                                          accept_downloads=True)  # fmt: skip
            page = context.new_page()
            sign_in(page, root, args["key"], "/requests")
            expect(page.locator("#requests-table thead .zone").first).to_contain_text("Europe/Paris")

            # Every page, as the API pages the same log.
            everything = api_pages(api, {})
            shown = page_through(page)
            assert shown == everything, ([len(p) for p in shown], [len(p) for p in everything])
            seen["log_rows"] = sum(len(p) for p in shown)
            first = page.locator("#requests-table tbody tr").first
            view = api.get(f"/usage/requests/{everything[0][0]}").json()
            assert first.locator("td").nth(0).locator("time").get_attribute("datetime") == view["created_at"]
            assert first.locator("td").nth(3).text_content() == f"{args['prefixes'][view['key_id']]}…"
            assert first.locator(".money").get_attribute("data-exact") == view["cost"]
            shot(page, "console-requests", backend)
            seen["csv_rows_all"] = download(page, api, {}, tmp)

            # Each filter, alone and together: the pages the API gives for the same filters.
            seen["filtered"] = {}
            for filters in args["filters"]:
                apply_filters(page, root, filters)
                assert page_through(page) == api_pages(api, filters), filters
                seen["filtered"][json.dumps(filters, sort_keys=True)] = download(page, api, filters, tmp)

            # A detail, opened from the log: every field, and its hold, charge and release.
            apply_filters(page, root, {"stream": "true", "status": "ok"})
            target = shown_ids(page)[0]
            page.click(f"#requests-table tr[data-request-id='{target}'] a")
            page.wait_for_url(f"{root}/requests/{target}")
            prefix = args["prefixes"][api.get(f"/usage/requests/{target}").json()["key_id"]]
            seen["detail"] = {"id": target, "ledger": check_detail(page, api, target, prefix)}
            shot(page, "console-request-detail", backend)
            axe_check(browser, context, f"{root}/requests/{target}", settle="#request-detail[data-loaded]")

            # A refused request: its hold and the release of all of it.
            failed = args["failed_id"]
            page.goto(f"{root}/requests/{failed}")
            prefix = args["prefixes"][api.get(f"/usage/requests/{failed}").json()["key_id"]]
            seen["failed"] = {"id": failed, "ledger": check_detail(page, api, failed, prefix)}

            # Another account's request is no request of this one.
            response = page.goto(f"{root}/requests/{args['other_id']}")
            assert response is not None and response.status == 404
            expect(page.locator("#not-found")).to_be_visible()

            axe_check(browser, context, f"{root}/requests", settle="#requests-table tbody tr[data-request-id]")
        finally:
            browser.close()
    return seen


if __name__ == "__main__":
    sys.stdout.write(json.dumps(drive(json.load(sys.stdin))))
