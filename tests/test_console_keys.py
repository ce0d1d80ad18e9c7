"""/keys, the account's API keys: over plain HTTP (the refusals, the storage it reads) and in a
real browser (tests/console_keys_driver.py: create a key and use it, revoke keys, the CSRF
check, screenshots and axe-core), each on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import httpx
import pytest
import trio
from browser_kit import CHROMIUM, backend_of, run_driver
from fake_azure import open_fake_azure
from harness import MODEL, open_gateway
from storage_helpers import request_log

from omixa.storage import RequestLogFilter

DRIVER = Path(__file__).resolve().parent / "console_keys_driver.py"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def signed_in(client: httpx.AsyncClient, key: str) -> str:
    """Signs ``client`` in with ``key``; the session's CSRF token (from /keys)."""
    form = await client.get("/signin")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    assert (await client.post("/signin", data={"api_key": key, "csrf": token[1]})).status_code == 302
    page = await client.get("/keys")
    assert page.status_code == 200
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    assert csrf is not None
    return csrf[1]


async def chat(gw, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.base_url, headers={"Authorization": f"Bearer {key}"}) as api:
        return await api.post("/chat/completions", json=CHAT)


async def test_keys_refusals_over_http(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("1.00")
        other_account, other_key = await gw.funded_account("1.00")
        other_id = (await gw.engine.accounts.keys(other_account))[0].id
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            # Signed out: the page sends to sign-in, the posts are refused in the envelope.
            away = await client.get("/keys")
            assert away.status_code == 302 and away.headers["location"] == "/signin?next=%2Fkeys"
            refused = await client.post("/keys", data={"rpm": "5"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            refused = await client.post(f"/keys/{other_id}/revoke")
            assert refused.status_code == 401

            csrf = await signed_in(client, key)
            # Without the session's CSRF token (a cross-site form): refused, nothing created.
            forged = await client.post("/keys", data={"rpm": "5"})
            assert forged.status_code == 400 and forged.json()["error"]["code"] == "invalid_request"
            forged = await client.post("/keys", data={"rpm": "5", "csrf": "guess"})
            assert forged.status_code == 400
            assert len(await gw.engine.accounts.keys(account)) == 1

            # Another account's key: no such key here, and it stays live.
            foreign = await client.post(f"/keys/{other_id}/revoke", data={"csrf": csrf})
            assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"
            assert (await chat(gw, other_key)).status_code == 200
            unknown = await client.post("/keys/key_000000000000000000000000/revoke", data={"csrf": csrf})
            assert unknown.status_code == 404

            # A limit that is not a count: the page again, with the error, nothing created.
            bad = await client.post("/keys", data={"rpm": "-1", "csrf": csrf})
            assert bad.status_code == 400 and 'id="keys-error"' in bad.text and "RPM must be" in bad.text
            assert len(await gw.engine.accounts.keys(account)) == 1

            # Looser than the server's default (rpm 600): unlimited, or above it, or digits
            # that are not ASCII: refused, nothing created.
            for rpm in ("0", "601", "\u00b2"):
                loose = await client.post("/keys", data={"rpm": rpm, "csrf": csrf})
                assert loose.status_code == 400 and "RPM must be" in loose.text, rpm
            assert len(await gw.engine.accounts.keys(account)) == 1

            # Created: the secret is in this answer only, with the limits spelt out (the
            # default tpm is unlimited, so any tpm is within it).
            made = await client.post("/keys", data={"rpm": "30", "tpm": "12,000", "csrf": csrf})
            assert made.status_code == 201
            secret = re.search(r'id="new-key-secret"[^>]*value="(omx_live_[^"]+)"', made.text)
            assert secret is not None
            keys = await gw.engine.accounts.keys(account)
            assert len(keys) == 2 and keys[0].rpm == 30 and keys[0].tpm == 12_000
            assert keys[0].signature_required is False
            listed = await client.get("/keys")
            assert secret[1] not in listed.text and keys[0].prefix in listed.text
            row = re.search(rf'<tr data-key-id="{keys[0].id}".*?</tr>', listed.text, re.S)
            assert row is not None and ">30<" in row[0] and "12,000" in row[0] and "never" in row[0]
            mine = re.search(rf'<tr data-key-id="{keys[1].id}".*?</tr>', listed.text, re.S)
            assert mine is not None and "default (600)" in mine[0] and "this session" in mine[0]

            # Last used: the time of the key's newest request log.
            assert (await chat(gw, secret[1])).status_code == 200
            await gw.flushed()
            used = await gw.engine.accounts.last_used(account)
            assert set(used) == {keys[0].id}
            log_rows = await gw.storage.list_request_logs(RequestLogFilter(account_id=account, limit=5))
            assert used[keys[0].id] == log_rows[0].created_at
            listed = await client.get("/keys")
            row = re.search(rf'<tr data-key-id="{keys[0].id}".*?</tr>', listed.text, re.S)
            assert row is not None and "never" not in row[0]


async def test_the_console_creates_keys_up_to_max_keys_live_ones(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, dashboard={"max_keys": 2}) as gw:
        account, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            csrf = await signed_in(client, key)
            assert (await client.post("/keys", data={"csrf": csrf})).status_code == 201
            full = await client.post("/keys", data={"csrf": csrf})
            assert full.status_code == 400 and "2 live keys" in full.text
            assert len(await gw.engine.accounts.keys(account)) == 2
            # A revoked key no longer counts; the CLI's path (the engine's create_key) is not bound.
            newest = (await gw.engine.accounts.keys(account))[0]
            await gw.engine.accounts.revoke_own_key(account, newest.id)
            assert (await client.post("/keys", data={"csrf": csrf})).status_code == 201
            await gw.engine.accounts.create_key(account)
            assert sum(k.revoked_at is None for k in await gw.engine.accounts.keys(account)) == 3


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium)")
async def test_keys_page_in_a_real_browser(database_url, secret_key):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("5.00")
        spare = await gw.engine.accounts.create_key(account, rpm=120)
        # A request with the spare key, so the page has a last use to show.
        assert (await chat(gw, spare.secret)).status_code == 200
        await gw.flushed()
        seen = await run_driver(
            DRIVER,
            {
                "root": gw.root_url,
                "key": key,
                "spare_key": spare.secret,
                "spare_id": spare.record.id,
                "backend": backend_of(database_url),
            },
        )
        keys = {k.id: k for k in await gw.engine.accounts.keys(account)}
        created = keys[seen["created_id"]]
        assert created.rpm == 30 and created.tpm is None and created.revoked_at is None
        assert created.signing_secret_enc is not None  # OMIXA_SECRET_KEY is set: a secret was issued
        assert keys[spare.record.id].revoked_at is not None
        session_key = next(k for k in keys.values() if k.id not in (created.id, spare.record.id))
        assert session_key.revoked_at is not None
        with trio.fail_after(10):
            await gw.flushed()
        assert await gw.storage.verify_ledger() == []


async def test_key_last_used_is_each_keys_newest_log(storage):
    account = await storage.create_account("dev@example.com")
    used = await storage.create_api_key(account_id=account.id, key_hash="h1", prefix="omx_live_aaaaaa", rpm=None)
    idle = await storage.create_api_key(account_id=account.id, key_hash="h2", prefix="omx_live_bbbbbb", rpm=None)
    other = await storage.create_account("other@example.com")
    base = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)
    logs = [
        request_log("req_1", account_id=account.id, key_id=used.id, created_at=base),
        request_log("req_2", account_id=account.id, key_id=used.id, created_at=base + dt.timedelta(minutes=5)),
        request_log("req_3", account_id=account.id, key_id=used.id, created_at=base - dt.timedelta(minutes=5)),
        # Another account's log naming the key (no such log is written; the account counts).
        request_log("req_4", account_id=other.id, key_id=used.id, created_at=base + dt.timedelta(hours=1)),
    ]
    await storage.insert_request_logs(logs)
    assert await storage.key_last_used(account.id) == {used.id: base + dt.timedelta(minutes=5)}
    assert idle.id not in await storage.key_last_used(account.id)
