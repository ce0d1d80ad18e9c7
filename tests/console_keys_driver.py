"""Drives /keys in headless Chromium for tests/test_console_keys.py (see tests/browser_kit.py
for why it is a process of its own). Arguments (JSON on stdin): root, chromium, key (the
session's), spare_key and spare_id (another live key of the account, used once), backend.
Prints what it saw as JSON; every check is an assert."""

from __future__ import annotations

import httpx
from browser_kit import axe_check, driver_main, shot, sign_in
from playwright.sync_api import expect, sync_playwright

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def chat_status(api: httpx.Client, key: str) -> int:
    return api.post("/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT).status_code


def drive(root: str, chromium: str, key: str, spare_key: str, spare_id: str, backend: str) -> dict:
    seen: dict = {}
    api = httpx.Client(base_url=f"{root}/api/v1", timeout=30)
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=root)
            page = context.new_page()
            sign_in(page, root, key, "/keys")
            table = page.locator("#keys-table")
            expect(table.locator("tbody tr")).to_have_count(2)
            spare_row = table.locator(f'tr[data-key-id="{spare_id}"]')
            expect(spare_row).to_contain_text("120")
            expect(spare_row.locator("td.last-used time")).to_have_count(1)  # used once
            expect(page.locator(".zone-label").first).to_contain_text("UTC")
            own_row = table.locator("tr", has=page.locator(".badge"))
            expect(own_row).to_contain_text("default (600)")
            expect(own_row.locator("td.last-used")).to_have_text("never")
            axe_check(browser, context, f"{root}/keys", ready="#keys-table")
            shot(page, "console-keys", backend)

            # Create a key: its secret is shown once, works against the API, and is gone after.
            page.fill("#rpm", "30")
            page.click("#create-key button[type=submit]")
            created = page.locator("#key-created")
            expect(created).to_be_visible()
            secret = page.input_value("#new-key-secret")
            assert secret.startswith("omx_live_") and len(secret) > 40
            assert page.input_value("#new-key-signing").startswith("omx_sig_")
            seen["created_id"] = created.get_attribute("data-key-id")
            expect(page).to_have_url(f"{root}/keys")  # the history entry no longer holds the post
            page.click('button.copy[data-copy="new-key-secret"]')
            expect(page.locator("#copy-status")).not_to_have_text("")
            shot(page, "console-key-created", backend)
            assert chat_status(api, secret) == 200
            page.reload()
            expect(page.locator("#key-created")).to_have_count(0)
            assert secret not in page.content()
            expect(table.locator(f'tr[data-key-id="{seen["created_id"]}"]')).to_contain_text("30")

            # A forged post (no CSRF token) creates nothing and revokes nothing.
            forged = page.request.post(f"{root}/keys", form={"rpm": "1"})
            assert forged.status == 400, forged.status
            forged = page.request.post(f"{root}/keys/{spare_id}/revoke", form={"csrf": "guess"})
            assert forged.status == 400, forged.status
            page.reload()
            expect(table.locator("tbody tr")).to_have_count(3)
            assert chat_status(api, spare_key) == 200

            # Revoke the spare key: a confirmation first; then the API refuses it.
            spare_row.locator("button.revoke").click()
            dialog = page.locator("#revoke-dialog")
            expect(dialog).to_be_visible()
            expect(page.locator("#revoke-current")).to_be_hidden()
            page.click("#revoke-cancel")
            expect(dialog).to_be_hidden()
            expect(spare_row.locator(".status")).to_contain_text("live")
            spare_row.locator("button.revoke").click()
            page.click("#revoke-confirm")
            expect(page.locator("#keys-revoked")).to_be_visible()
            expect(spare_row.locator(".status")).to_contain_text("revoked")
            expect(spare_row.locator("button.revoke")).to_have_count(0)
            assert chat_status(api, spare_key) == 401

            # Revoke the session's own key: the session ends, the next page is sign-in.
            own_row.locator("button.revoke").click()
            expect(page.locator("#revoke-current")).to_be_visible()
            page.click("#revoke-confirm")
            page.wait_for_url(f"{root}/signin?next=%2Fkeys")
            page.goto(f"{root}/keys")
            expect(page).to_have_url(f"{root}/signin?next=%2Fkeys")
            assert chat_status(api, key) == 401
            assert chat_status(api, secret) == 200  # the new key lives on
        finally:
            browser.close()
    return seen


if __name__ == "__main__":
    driver_main(drive)
