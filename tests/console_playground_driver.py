"""Drives /signin, /catalog and /playground in headless Chromium for tests/test_console_playground.py.

Run as its own process (see tests/browser_kit.py): a JSON object of arguments on stdin, a
JSON object of what it saw on stdout; every check is an assert. The gateway in front of it
serves gpt-4o-mini, gpt-4.1 (no priority deployment), gpt-5.1 (a priority deployment), an
embedding and an image model; its fake upstream refuses the first chat request with Azure's
content-filter error and reports 8 cached prompt tokens in every answer.
"""

from __future__ import annotations

from typing import Any

import httpx
from browser_kit import axe_check, driver_main, shot, sign_in, wait_for_length
from playwright.sync_api import expect, sync_playwright

MINI = "gpt-4o-mini"
REASONING = "gpt-5.1"
TURNS = "#pg-transcript li.assistant"
CACHED = 8  # the prompt tokens the fake upstream reports as cached


def wait_turn(page: Any, index: int, state: str = "done") -> Any:
    """The ``index``-th assistant turn once it reached ``state`` and its log's numbers show."""
    turn = page.locator(TURNS).nth(index)
    expect(turn).to_have_attribute("data-state", state)
    expect(turn.locator(".turn-stats")).to_have_attribute("data-state", "done")
    return turn


def catalog(page: Any, root: str) -> None:
    """The catalog lists the enabled models' prices; its search and modality filter narrow it."""
    page.goto(f"{root}/catalog")
    mini = page.locator(f'#catalog-table tr[data-model="{MINI}"]')
    expect(mini).to_contain_text("0.15")
    expect(mini).to_contain_text("0.60")
    page.fill("#catalog-search", "no-such-model")
    expect(page.locator("#catalog-empty")).to_be_visible()
    expect(mini).to_be_hidden()
    page.fill("#catalog-search", "mini")
    expect(mini).to_be_visible()
    expect(page.locator('#catalog-table tr[data-model="gpt-4.1"]').first).to_be_hidden()
    expect(page.locator("#catalog-empty")).to_be_hidden()
    page.fill("#catalog-search", "")
    page.select_option("#catalog-modality", "embedding")
    expect(mini).to_be_hidden()
    expect(page.locator('#catalog-table tr[data-model="text-embedding-3-small"]').first).to_be_visible()
    page.select_option("#catalog-modality", "image")
    expect(page.locator('#catalog-table tr[data-model="gpt-image-1"]').first).to_be_visible()
    expect(page.locator("#catalog-table")).to_contain_text("Per image")
    page.select_option("#catalog-modality", "")
    expect(page.locator(f'#catalog-table tr[data-model="{REASONING}"]').first).to_contain_text(
        "none, low, medium, high"
    )
    expect(page.locator(f'#catalog-table tr.sub[data-model="{REASONING}"]')).to_contain_text("Priority tier")


def controls(page: Any) -> None:
    """Each model shows the controls it takes."""
    model = page.locator("#pg-model")
    expect(model).to_have_value(MINI)  # the first chat model of the catalog
    expect(page.locator("#pg-temperature-row")).to_be_visible()
    expect(page.locator("#pg-effort-row")).to_be_hidden()
    expect(page.locator("#pg-verbosity-row")).to_be_hidden()
    expect(page.locator("#pg-fast-row")).to_be_hidden()  # no priority tier
    expect(page.locator("#pg-max-tokens-hint")).to_contain_text("max_tokens")
    expect(page.locator("#pg-max-tokens")).to_have_attribute("max", "16384")
    page.select_option("#pg-model", "gpt-4.1")
    expect(page.locator("#pg-fast-row")).to_be_hidden()  # priority prices, but no priority deployment
    page.select_option("#pg-model", REASONING)
    expect(page.locator("#pg-temperature-row")).to_be_hidden()  # Azure reasoning models refuse it
    expect(page.locator("#pg-temperature-off")).to_be_visible()
    expect(page.locator("#pg-effort-row")).to_be_visible()
    assert page.locator("#pg-effort option").all_text_contents() == ["Default", "none", "low", "medium", "high"]
    expect(page.locator("#pg-verbosity-row")).to_be_visible()
    expect(page.locator("#pg-fast-row")).to_be_visible()
    expect(page.locator("#pg-fast-hint")).to_contain_text("$20.00 output")
    expect(page.locator("#pg-max-tokens-hint")).to_contain_text("max_completion_tokens")
    # Every control has a label.
    for name in "model system max-tokens temperature effort verbosity fast prompt".split():
        assert page.locator(f'label[for="pg-{name}"]').count() == 1, name
    page.select_option("#pg-model", MINI)


def drive(root: str, chromium: str, key: str, key_poor: str, backend: str) -> dict:
    seen: dict[str, Any] = {}
    api = httpx.Client(base_url=f"{root}/api/v1", timeout=30, headers={"Authorization": f"Bearer {key}"})
    expect.set_options(timeout=15_000)  # not Playwright's 5 s: a loaded CI machine is slow
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(f"{root}/signin")
            expect(page.locator("#api_key")).to_be_visible()
            shot(page, "console-signin", backend)
            axe_check(browser, context, f"{root}/signin", ready="#api_key")
            sign_in(page, root, key, landing="/catalog")
            catalog(page, root)
            shot(page, "console-catalog", backend)
            axe_check(browser, context, f"{root}/catalog", ready="#catalog-table")

            page.click("nav >> text=Playground")
            page.wait_for_url(f"{root}/playground")
            controls(page)
            prompt = page.locator("#pg-prompt")

            # The upstream's refusal shows inline, with its code and message; the message goes
            # back into the box and the turn stays out of the conversation.
            prompt.fill("Hello")
            prompt.press("Control+Enter")
            refused = page.locator(TURNS).first
            expect(refused).to_have_attribute("data-state", "error")
            expect(refused.locator(".turn-error")).to_contain_text("content_filter")
            expect(refused.locator(".turn-error")).to_contain_text("filtered due to the prompt")
            expect(prompt).to_have_value("Hello")
            page.click("#pg-new")
            expect(page.locator("#pg-transcript li")).to_have_count(0)
            expect(page.locator("#pg-empty")).to_be_visible()

            # Two turns, with a system prompt, max tokens and temperature. The first is sent
            # with Ctrl+Enter; the second by tabbing from the message to Send.
            page.fill("#pg-system", "You are terse.")
            page.fill("#pg-max-tokens", "12")
            page.fill("#pg-temperature", "0.3")
            prompt.fill("First question")
            prompt.press("Control+Enter")
            first = wait_turn(page, 0)
            expect(first.locator(".turn-text")).not_to_be_empty()
            expect(prompt).to_have_value("")
            expect(prompt).to_be_focused()
            prompt.fill("Second question")
            page.keyboard.press("Tab")
            expect(page.locator("#pg-send")).to_be_focused()
            page.keyboard.press("Enter")
            second = wait_turn(page, 1)
            expect(page.locator("#pg-transcript li.user")).to_have_count(2)
            seen["first_text"] = first.locator(".turn-text").text_content()
            ids = [t.get_attribute("data-request-id") for t in (first, second)]
            seen["turns"] = []
            for turn, request_id in zip((first, second), ids, strict=True):
                log = api.get(f"/usage/requests/{request_id}").json()
                stats = turn.locator(".turn-stats")
                link = stats.locator("[data-stat=request] a")
                expect(link).to_have_attribute("href", f"/requests/{request_id}")
                expect(link).to_have_text(request_id)
                cost = stats.locator("[data-stat=cost] .money")
                expect(cost).to_have_attribute("data-exact", log["cost"])
                expect(cost).to_have_attribute("title", f"${log['cost']} exactly")
                expect(cost).to_have_text(f"${float(log['cost']):.6f}")
                expect(stats.locator("[data-stat=prompt] dd")).to_have_text(f"{log['prompt_tokens']:,}")
                expect(stats.locator("[data-stat=completion] dd")).to_have_text(f"{log['completion_tokens']:,}")
                expect(stats.locator("[data-stat=cached] dd")).to_have_text(f"{log['cached_tokens']:,}")
                expect(stats.locator("[data-stat=reasoning]")).to_have_count(0)  # none reported: not shown
                expect(stats.locator("[data-stat=latency] dd")).to_have_text(f"{log['latency_ms']:,} ms")
                expect(stats.locator("[data-stat=ttft] dd")).to_have_text(f"{log['ttft_ms']:,} ms")
                assert log["status"] == "ok" and log["completion_tokens"] <= 12 and log["cached_tokens"] == CACHED
                seen["turns"].append({"id": request_id, "upstream_id": log["upstream_request_id"]})
            shot(page, "console-playground", backend)

            # Fast mode on the model with a priority deployment: the answer's tier is shown.
            page.click("#pg-new")
            page.select_option("#pg-model", REASONING)
            page.check("#pg-fast")
            page.fill("#pg-max-tokens", "40")
            prompt.fill("Quick, please.")
            page.click("#pg-send")
            fast = wait_turn(page, 0)
            expect(fast.locator(".turn-head .badge")).to_have_text("Fast")
            expect(fast.locator("[data-stat=tier] dd")).to_have_text("priority")
            seen["fast"] = api.get(f"/usage/requests/{fast.get_attribute('data-request-id')}").json()

            # Stop: the stream is cancelled and the turn shows what was charged.
            page.click("#pg-new")
            page.select_option("#pg-model", MINI)
            page.fill("#pg-max-tokens", "")
            page.fill("#pg-temperature", "")
            prompt.fill("Tell me a long story.")
            prompt.press("Control+Enter")
            streaming = page.locator(TURNS).first
            expect(streaming).to_have_attribute("data-state", "streaming")
            output = streaming.locator(".turn-text")
            length = wait_for_length(output, 1)
            wait_for_length(output, length + 10)  # more text arrives while it streams
            assert streaming.get_attribute("data-state") == "streaming"
            expect(page.locator("#pg-stop")).to_be_enabled()
            page.click("#pg-stop")
            stopped = wait_turn(page, 0, "stopped")
            expect(stopped.locator(".turn-head")).to_contain_text("Stopped")
            seen["stopped"] = {
                "id": stopped.get_attribute("data-request-id"),
                "cost": stopped.locator("[data-stat=cost] .money").get_attribute("data-exact"),
                "status": stopped.locator(".turn-stats").get_attribute("data-status"),
            }

            # New conversation while a turn streams: that turn is cancelled and never sent again.
            prompt.fill("Another long story.")
            prompt.press("Control+Enter")
            wait_for_length(page.locator(TURNS).first.locator(".turn-text"), 5)
            page.click("#pg-new")
            expect(page.locator("#pg-transcript li")).to_have_count(0)
            page.fill("#pg-max-tokens", "5")
            prompt.fill("Fresh start")
            page.click("#pg-send")
            fresh = wait_turn(page, 0)
            expect(page.locator("#pg-transcript li")).to_have_count(2)
            seen["fresh"] = api.get(f"/usage/requests/{fresh.get_attribute('data-request-id')}").json()
            axe_check(browser, context, f"{root}/playground", ready="#pg-form")

            # A phone-width view: one column, nothing wider than the screen.
            phone = browser.new_context(viewport={"width": 390, "height": 844})
            phone.add_cookies(context.cookies())  # type: ignore[arg-type]
            phone_page = phone.new_page()
            phone_page.goto(f"{root}/playground")
            expect(phone_page.locator("#pg-prompt")).to_be_visible()
            assert phone_page.evaluate("document.documentElement.scrollWidth") <= 390
            phone.close()

            # An empty wallet: the refusal shows inline, with a way to top up.
            poor = browser.new_context(viewport={"width": 1280, "height": 900})
            poor_page = poor.new_page()
            sign_in(poor_page, root, key_poor, landing="/playground")
            poor_page.fill("#pg-prompt", "Hi")
            poor_page.click("#pg-send")
            error = poor_page.locator(f"{TURNS} .turn-error")
            expect(error).to_contain_text("insufficient_balance")
            expect(error.locator("a")).to_have_attribute("href", "/wallet")
            poor.close()

            # The playground's chat call needs the session's CSRF token, and a session.
            cookies = {c["name"]: c["value"] for c in context.cookies()}
            forged = httpx.post(
                f"{root}/playground/chat/completions",
                cookies=cookies,
                json={"model": MINI, "messages": [{"role": "user", "content": "x"}]},
            )
            assert forged.status_code == 400, forged.text
            anonymous = httpx.post(f"{root}/playground/chat/completions", json={"model": MINI, "messages": []})
            assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
        finally:
            browser.close()
            api.close()
    return seen


if __name__ == "__main__":
    driver_main(drive)
