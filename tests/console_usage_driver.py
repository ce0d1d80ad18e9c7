"""Drives /usage in headless Chromium for tests/test_console_usage.py (its own process: see
tests/browser_kit.py). Reads a JSON object of arguments on stdin, prints what it saw.

Steps: sign in; the default range (last 24 hours) shows the API's numbers and a new request
appears without a reload; a custom day (in the browser's zone, not UTC) shows that day's
numbers, then filtered by key and by model, each compared with /api/v1/usage/rollups for the
same range and filters; a chart's tooltip shows an exact amount of the API; every chart
has at least five labelled y ticks; an empty day shows the empty states; the CSV download
is the API's CSV; screenshots (console-usage, console-usage-phone: no horizontal scroll at
390 px); axe-core finds nothing serious.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from browser_kit import axe_check, driver_main, shot, sign_in
from playwright.sync_api import expect, sync_playwright

from omixa.engine.money import format_usd


def grouped(numbers: int) -> str:
    return f"{numbers:,}"


def drive(
    root: str,
    chromium: str,
    secret: str,
    keys: list[list[str]],
    models: list[str],
    zone: str,
    custom_day: str,
    poll_seconds: float,
    backend: str,
) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    api = httpx.Client(base_url=f"{root}/api/v1", headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    expect.set_options(timeout=15_000)  # not Playwright's 5 s: a loaded CI machine is slow
    tz = zoneinfo.ZoneInfo(zone)

    def rollups(params: dict[str, str], **more: str) -> list[dict[str, Any]]:
        answer = api.get("/usage/rollups", params=params | more)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["data"])

    def page_params(page: Any) -> dict[str, str]:
        """The range and filters the page asks for, as its CSV link names them."""
        return dict(parse_qsl(urlsplit(page.locator("#download-csv").get_attribute("href")).query))

    def wait_params(page: Any, wanted: dict[str, str]) -> None:
        """Waits until the page asks for ``wanted`` (its CSV link is set as it asks)."""
        deadline = time.monotonic() + 15
        while (params := page_params(page)) != wanted:
            assert time.monotonic() < deadline, (params, wanted)
            time.sleep(0.05)

    def check_tiles(page: Any, params: dict[str, str]) -> list[dict[str, Any]]:
        """The tiles and tables show the API's sums for the page's range and filters."""
        buckets = rollups(params)
        requests = sum(b["requests"] for b in buckets)
        expect(page.locator("#total-requests")).to_have_text(grouped(requests))
        cost = sum((Decimal(b["cost"]) for b in buckets), Decimal(0))
        money = page.locator("#total-cost .money")
        expect(money).to_have_attribute("data-exact", format_usd(int(cost * 10**9)))
        expect(money).to_have_attribute("title", f"${format_usd(int(cost * 10**9))} exactly")
        errors = sum(b["errors"] for b in buckets)
        expect(page.locator("#total-errors")).to_have_text(grouped(errors))
        tokens = sum(b["total_tokens"] for b in buckets)
        expect(page.locator("#total-tokens")).to_have_text(grouped(tokens))
        for model in {b["model"] for b in rollups(params, group_by="model")}:
            mine = [b for b in rollups(params, group_by="model") if b["model"] == model]
            row = page.locator(f'#models-table tr[data-model="{model}"]')
            expect(row.locator("td").first).to_have_text(grouped(sum(b["requests"] for b in mine)))
        for key_id, prefix in keys:
            mine = [b for b in rollups(params, group_by="key") if b["key_id"] == key_id]
            row = page.locator(f'#keys-table tr[data-key-id="{key_id}"]')
            if mine:
                expect(row).to_contain_text(prefix)
                expect(row.locator("td").first).to_have_text(grouped(sum(b["requests"] for b in mine)))
            else:
                expect(row).to_have_count(0)
        return buckets

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, timezone_id=zone, accept_downloads=True
            )
            page = context.new_page()
            sign_in(page, root, secret)

            # The default range: the last 24 hours, hourly, as the API's default range.
            expect(page.locator("#range-label")).to_contain_text("hourly buckets")
            expect(page.locator("#range-label")).to_contain_text(zone)
            params = page_params(page)
            assert params["granularity"] == "hour"
            api_default = api.get("/usage/rollups").json()
            assert (params["since"], params["until"]) == (api_default["since"], api_default["until"])
            check_tiles(page, params)
            wallet = api.get("/wallet").json()
            expect(page.locator("#wallet-balance .money")).to_have_attribute("data-exact", wallet["balance"])

            # A new request appears within the poll, without a reload, linked to its log.
            page.evaluate("window.__noReload = true")
            made = api.post(
                "/chat/completions", json={"model": models[0], "messages": [{"role": "user", "content": "hi"}]}
            )
            assert made.status_code == 200, made.text
            request_id = made.headers["x-request-id"]
            row = page.locator(f'#latest-table tr[data-request-id="{request_id}"]')
            expect(row).to_be_visible(timeout=(poll_seconds + 5) * 1000)
            expect(row.locator("a")).to_have_attribute("href", f"/requests/{request_id}")
            assert page.evaluate("window.__noReload") is True
            check_tiles(page, params)

            # A custom day in the browser's zone (New York, not UTC): that local day, hourly.
            page.click("[data-range=custom]")
            page.fill("#range-from", custom_day)
            page.fill("#range-to", custom_day)
            page.click("#custom-range button[type=submit]")
            day = dt.date.fromisoformat(custom_day)
            since = dt.datetime.combine(day, dt.time(), tz).astimezone(dt.UTC)
            until = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz).astimezone(dt.UTC)
            want = {"granularity": "hour", "since": since.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "until": until.strftime("%Y-%m-%dT%H:%M:%S.000Z")}  # fmt: skip
            wait_params(page, want)
            buckets = check_tiles(page, want)
            seen["custom_requests"] = sum(b["requests"] for b in buckets)
            expect(page.locator("#range-label")).to_contain_text(f"Times in {zone}")
            shot(page, "console-usage-custom", backend)

            # Filtered by key, then by key and model: every tile and table follows.
            key_id, prefix = keys[1]
            page.select_option("#filter-key", key_id)
            filtered = want | {"key_id": key_id}
            wait_params(page, filtered)
            by_key = check_tiles(page, filtered)
            assert 0 < sum(b["requests"] for b in by_key) < seen["custom_requests"]
            expect(page.locator("#keys-table tbody tr")).to_have_count(1)
            page.select_option("#filter-model", models[0])
            both = filtered | {"model": models[0]}
            wait_params(page, both)
            check_tiles(page, both)
            expect(page.locator("#models-table tbody tr")).to_have_count(1)
            page.select_option("#filter-model", "")
            wait_params(page, filtered)

            # A chart's tooltip shows the exact amount of the API's bucket, per model.
            per_model = [b for b in rollups(filtered, group_by="model") if Decimal(b["cost"]) > 0]
            assert per_model
            wanted = {f"{b['model']}: ${b['cost']}" for b in per_model}
            check_tiles(page, filtered)  # the page has drawn the filtered data
            over = page.locator("#chart-cost .u-over")
            expect(over).to_be_visible()
            box = over.bounding_box()
            assert box is not None
            tips: set[str] = set()
            for step in range(0, 97):
                page.mouse.move(box["x"] + box["width"] * step / 96, box["y"] + box["height"] * 0.6)
                tip = page.locator("#chart-cost .chart-tip")
                if tip.is_visible():
                    tips.add(tip.text_content() or "")
            found = [w for w in wanted if any(w in t for t in tips)]
            assert found, (wanted, sorted(tips)[:5])
            seen["tooltip"] = found[0]
            page.mouse.move(0, 0)

            # Every chart has at least five labelled y ticks (uPlot draws them on a canvas; the
            # chart layer lists them).
            for chart in ("cost", "tokens", "requests", "latency"):
                plot = page.locator(f"#chart-{chart}")
                expect(plot.locator("canvas")).to_have_count(1)
                labels = json.loads(plot.get_attribute("data-y-labels") or "[]")
                assert len(labels) >= 5 and len(set(labels)) == len(labels) and all(labels), (chart, labels)

            # The CSV download is the API's CSV for the same range and filters.
            with page.expect_download() as download_info:
                page.click("#download-csv")
            download = download_info.value
            ours = Path(download.path()).read_bytes()
            theirs = api.get("/usage/rollups", params=filtered | {"format": "csv"})
            assert ours == theirs.content and len(ours.splitlines()) == len(by_key) + 1
            assert download.suggested_filename.startswith("omixa-rollups-hour-")

            # An empty day: the empty states.
            page.select_option("#filter-key", "")
            empty_day = (day + dt.timedelta(days=1)).isoformat()
            page.fill("#range-from", empty_day)
            page.fill("#range-to", empty_day)
            page.click("#custom-range button[type=submit]")
            expect(page.locator("#models-table")).to_contain_text("No requests in this range.")
            expect(page.locator("#keys-table")).to_contain_text("No requests in this range.")
            expect(page.locator("#latest-table")).to_contain_text("No requests in this range.")
            expect(page.locator("#total-requests")).to_have_text("0")
            expect(page.locator("#chart-cost + .empty")).to_be_visible()

            # A range of days: daily buckets, the last 30 days (the screenshot of the docs).
            page.click("[data-range='30d']")
            expect(page.locator("#range-label")).to_contain_text("daily buckets (UTC days)")
            check_tiles(page, page_params(page))
            expect(page.locator("#latest-table tbody tr").first).to_have_attribute("data-request-id", request_id)
            shot(page, "console-usage", backend)
            axe_check(browser, context, f"{root}/usage", settle="#models-table tbody tr th")

            # A phone: no horizontal scroll.
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, timezone_id=zone)
            phone.add_cookies(context.cookies())  # type: ignore[arg-type]
            phone_page = phone.new_page()
            phone_page.goto(f"{root}/usage")
            expect(phone_page.locator("#models-table tbody tr th").first).to_be_visible()
            expect(phone_page.locator("#chart-cost canvas")).to_have_count(1)
            assert phone_page.evaluate("document.documentElement.scrollWidth") <= 390
            shot(phone_page, "console-usage-phone", backend)
            phone.close()
        finally:
            browser.close()
            api.close()
    return seen


if __name__ == "__main__":
    driver_main(drive, stuck_after=220)
