"""Dashboard sessions over plain HTTP (the browser test covers the pages): sign-in needs its
CSRF token, never redirects off-site, and refuses keys that must sign their requests."""

from __future__ import annotations

import re

import httpx
from fake_azure import open_fake_azure
from harness import open_gateway
from test_signing_e2e import signed_account


async def signin_form(client: httpx.AsyncClient, next_path: str = "/usage") -> str:
    page = await client.get("/signin", params={"next": next_path})
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None, "the sign-in form has a csrf field"
    return match[1]


async def test_signin_checks_csrf_redirects_locally_and_refuses_signing_keys(tmp_path, secret_key):
    async with open_fake_azure() as fake, open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake) as gw:
        _, key = await gw.funded_account("1.00")
        _, _, strict_key, _ = await signed_account(gw, signature_required=True)
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            # A page without a session sends to sign-in, keeping where it was (query included).
            away = await client.get("/usage", params={"a": "1", "b": "2"})
            assert away.status_code == 302 and away.headers["location"] == "/signin?next=%2Fusage%3Fa%3D1%26b%3D2"
            # Without the form's token (a cross-site post): refused, no session.
            forged = await client.post("/signin", data={"api_key": key, "csrf": "guess"})
            assert forged.status_code == 400 and "omixa_session" not in forged.cookies

            # An off-site "next" falls back to /usage, also spelt with a tab or a newline that
            # browsers would strip ("/\t/evil.example" is "//evil.example" to them).
            for target in ("/\t/evil.example", "/\n/evil.example", "/\\evil.example", "https://evil.example/"):
                form = await client.get("/signin", params={"next": target})
                assert form.status_code == 200 and 'name="next" value="/usage"' in form.text
            token = await signin_form(client, "//evil.example/")
            ok = await client.post("/signin", data={"api_key": key, "csrf": token, "next": "//evil.example/"})
            assert ok.status_code == 302 and ok.headers["location"] == "/usage"
            assert "omixa_session" in ok.cookies
            assert key not in ok.headers["set-cookie"]
            feed = await client.get("/usage/data")
            assert feed.status_code == 200 and feed.json()["wallet"]["balance"] == "1.00"

        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            token = await signin_form(client)
            refused = await client.post("/signin", data={"api_key": strict_key, "csrf": token})
            assert refused.status_code == 401 and "must sign every request" in refused.text
            assert "omixa_session" not in refused.cookies
            assert (await client.get("/usage/data")).status_code == 401


async def test_signing_out_ends_the_session_on_the_server(database_url):
    """A copy of the session cookie taken before sign-out (another tab, a stolen cookie)
    stops working at once: for the usage feed and for spending through the playground."""
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient(base_url=gw.root_url) as client:
            token = await signin_form(client)
            assert (await client.post("/signin", data={"api_key": key, "csrf": token})).status_code == 302
            cookie = client.cookies["omixa_session"]
            page = await client.get("/playground")
            csrf = re.search(r'data-csrf="([^"]+)"', page.text)
            fed = await client.get("/usage/data")
            assert fed.status_code == 200
            # Feeds and exports carry the account's data: no cache keeps them (pages neither).
            for path in ("/usage/data", "/requests/data", "/wallet/data", "/usage/data/rollups.csv", "/keys"):
                assert (await client.get(path)).headers.get("cache-control") == "no-store", path
            out = await client.post("/signout", data={"csrf": csrf[1]})
            assert out.status_code == 302
        async with httpx.AsyncClient(base_url=gw.root_url, cookies={"omixa_session": cookie}) as copy:
            assert (await copy.get("/usage/data")).status_code == 401
            spent = await copy.post(
                "/playground/chat/completions",
                headers={"X-CSRF-Token": csrf[1]},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert spent.status_code == 401
        assert fake.requests == []
