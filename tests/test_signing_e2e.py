"""Request signatures end to end: real Hypercorn, real fake Azure, both storage backends.

The official openai SDK signs through the shipped ``OmixaSigner``; the shell recipe of
docs/api.md is run as written; refused requests hold, charge and send nothing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import openai
import pytest
import trio
from cryptography.fernet import Fernet
from fake_azure import open_fake_azure
from harness import MODEL, open_gateway
from test_errors_e2e import check_envelope, ledger_unchanged

from omixa.engine.accounts import Accounts
from omixa.engine.secretbox import SecretKeyError, secret_box_from_env
from omixa_client import OmixaSigner, sign, signature_headers, signed_message

MESSAGES = [{"role": "user", "content": "hi"}]
API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


async def signed_account(gw, **options) -> tuple[str, str, str, str]:
    """(account id, key id, API key, signing secret) of a new funded account."""
    accounts = gw.engine.accounts
    account = await accounts.create_account("signer@example.com")
    await gw.storage.top_up(account.id, 10 * 10**9)  # $10
    new = await accounts.create_key(account.id, **options)
    assert new.signing_secret is not None and new.signing_secret.startswith("omx_sig_")
    return account.id, new.record.id, new.secret, new.signing_secret


def sdk(gw, key: str, signing_secret: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.base_url,
        api_key=key,
        max_retries=0,
        # The SDK's own client (httpx2, with its timeouts); test_signing_clients.py has the others.
        http_client=openai.DefaultHttpxClient(auth=OmixaSigner(signing_secret)),
    )


async def in_thread(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_openai_sdk_signs_through_the_helper_streaming_and_not(database_url, secret_key):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, security={"require_signature": True}) as gw:
        account, _, key, signing = await signed_account(gw)
        client = sdk(gw, key, signing)
        try:
            completion = await in_thread(client.chat.completions.create, model=MODEL, messages=MESSAGES)
            assert completion.choices[0].message.content == fake.reply

            def stream() -> str:
                chunks = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

            assert await in_thread(stream) == fake.reply
            models = await in_thread(client.models.list)  # a signed GET
            assert MODEL in [m.id for m in models.data]
            # The same client twice in the same second: distinct nonces, no false replay.
            for _ in range(2):
                await in_thread(client.chat.completions.create, model=MODEL, messages=MESSAGES)
            # Without the helper, the SDK's requests are refused and reach nothing.
            plain = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
            sent = len(fake.requests)
            with pytest.raises(openai.AuthenticationError) as refused:
                await in_thread(plain.chat.completions.create, model=MODEL, messages=MESSAGES)
            assert refused.value.body["code"] == "missing_signature"
            assert len(fake.requests) == sent
        finally:
            client.close()
        await gw.flushed()
        assert (await gw.storage.verify_ledger()) == []
        assert (await gw.storage.get_wallet(account)).locked == 0


async def test_refused_signatures_hold_and_send_nothing(database_url, secret_key):
    async with (
        open_fake_azure() as fake,
        open_gateway(database_url, fake, security={"require_signature": True}, server={"max_body_bytes": 4096}) as gw,
    ):
        account, _, key, signing = await signed_account(gw)
        rows = len(await gw.storage.ledger_entries(account))
        url = f"{gw.base_url}/chat/completions"
        path = "/api/v1/chat/completions"
        body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

        def signed(**kw):
            return {**auth, **signature_headers(signing, "POST", path, body, **kw)}

        async with httpx.AsyncClient() as client:
            check_envelope(await client.post(url, content=body, headers=auth), 401, "missing_signature")
            check_envelope(await client.get(f"{gw.base_url}/wallet", headers=auth), 401, "missing_signature")
            tampered = body.replace(b"hi", b"ho")
            check_envelope(await client.post(url, content=tampered, headers=signed()), 401, "invalid_signature")
            check_envelope(await client.post(f"{url}?x=1", content=body, headers=signed()), 401, "invalid_signature")
            wrong_secret = {**auth, **signature_headers("omx_sig_" + "A" * 43, "POST", path, body)}
            check_envelope(await client.post(url, content=body, headers=wrong_secret), 401, "invalid_signature")
            old = signed(timestamp=1_000_000)
            error = check_envelope(await client.post(url, content=body, headers=old), 401, "stale_timestamp")
            assert "300 seconds" in error["message"]
            too_big = b'{"model":"' + b"x" * 5000 + b'"}'
            big = {**auth, **signature_headers(signing, "POST", path, too_big)}
            check_envelope(await client.post(url, content=too_big, headers=big), 413, "request_too_large")
            # A wrong key is still invalid_api_key, whatever the signature.
            bad_key = {**signed(), "Authorization": "Bearer omx_live_nope"}
            check_envelope(await client.post(url, content=body, headers=bad_key), 401, "invalid_api_key")
            # No route: 404 before any key or signature check.
            check_envelope(await client.get(f"{gw.base_url}/nothing-here"), 404, "not_found")
            await ledger_unchanged(gw, account, rows)
            assert fake.requests == []

            once = signed()
            first = await client.post(url, content=body, headers=once)
            assert first.status_code == 200, first.text
            assert first.headers["x-ratelimit-limit-requests"]
            rows = len(await gw.storage.ledger_entries(account))
            check_envelope(await client.post(url, content=body, headers=once), 401, "replayed_request")
            await ledger_unchanged(gw, account, rows)
            assert len(fake.requests) == 1
            # A signed GET with a query string, and a non-UTF-8 body on a route that ignores it.
            target = "/api/v1/models?limit=2&after=gpt%2D4o"
            response = await client.get(
                gw.root_url + target, headers={**auth, **signature_headers(signing, "GET", target)}
            )
            assert response.status_code == 200, response.text
            odd = b"\xff\xfe\x00binary"
            response = await client.request(
                "GET",
                f"{gw.base_url}/wallet",
                content=odd,
                headers={**auth, **signature_headers(signing, "GET", "/api/v1/wallet", odd)},
            )
            assert response.status_code == 200, response.text


async def test_per_key_requirement_and_opt_in_verification(database_url, secret_key):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, _, strict_key, strict_secret = await signed_account(gw, signature_required=True)
        _, _, plain_key, plain_secret = await signed_account(gw)
        wallet = f"{gw.base_url}/wallet"
        async with httpx.AsyncClient() as client:
            check_envelope(
                await client.get(wallet, headers={"Authorization": f"Bearer {strict_key}"}), 401, "missing_signature"
            )
            ok = await client.get(
                wallet,
                headers={
                    "Authorization": f"Bearer {strict_key}",
                    **signature_headers(strict_secret, "GET", "/api/v1/wallet"),
                },
            )
            assert ok.status_code == 200, ok.text
            # A key that is not required to sign works unsigned ...
            assert (await client.get(wallet, headers={"Authorization": f"Bearer {plain_key}"})).status_code == 200
            # ... but a signature it sends is checked.
            forged = signature_headers(strict_secret, "GET", "/api/v1/wallet")
            check_envelope(
                await client.get(wallet, headers={"Authorization": f"Bearer {plain_key}", **forged}),
                401,
                "invalid_signature",
            )
            good = signature_headers(plain_secret, "GET", "/api/v1/wallet")
            assert (
                await client.get(wallet, headers={"Authorization": f"Bearer {plain_key}", **good})
            ).status_code == 200


async def test_rotation_grace_and_revocation_reach_every_process(database_url, secret_key):
    # Two gateways on one database stand for two processes; the CLI's Accounts is a third.
    async with (
        open_fake_azure() as fake,
        open_gateway(database_url, fake, security={"require_signature": True}) as one,
        open_gateway(database_url, fake, security={"require_signature": True}) as two,
    ):
        _, key_id, key, first_secret = await signed_account(one)
        operator = Accounts(one.storage, secret_box_from_env())

        async def status(gw, secret: str) -> int:
            headers = {"Authorization": f"Bearer {key}", **signature_headers(secret, "GET", "/api/v1/wallet")}
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{gw.base_url}/wallet", headers=headers)).status_code

        assert [await status(gw, first_secret) for gw in (one, two)] == [200, 200]
        second_secret = await operator.rotate_signing_secret(key_id, grace_seconds=3600)
        assert [await status(gw, s) for gw in (one, two) for s in (first_secret, second_secret)] == [200] * 4
        third_secret = await operator.rotate_signing_secret(key_id, grace_seconds=0)
        assert [await status(gw, s) for gw in (one, two) for s in (first_secret, second_secret)] == [401] * 4
        assert [await status(gw, third_secret) for gw in (one, two)] == [200, 200]
        assert await two.storage.revoke_api_key(key_id)
        assert [await status(gw, third_secret) for gw in (one, two)] == [401, 401]


async def start_error(database_url, **sections) -> BaseException:
    """The one error that stops a gateway's start-up, out of its exception groups."""
    try:
        async with open_gateway(database_url, deployments=[], **sections):
            pass
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return exc
    raise AssertionError("the gateway started")


async def test_start_up_refuses_enforcement_without_a_usable_server_key(database_url, monkeypatch, secret_key):
    monkeypatch.delenv("OMIXA_SECRET_KEY")
    error = await start_error(database_url, security={"require_signature": True})
    assert isinstance(error, SecretKeyError) and "OMIXA_SECRET_KEY is not set" in str(error)
    monkeypatch.setenv("OMIXA_SECRET_KEY", secret_key)
    async with open_gateway(database_url, deployments=[]) as gw:
        await signed_account(gw, signature_required=True)
    monkeypatch.delenv("OMIXA_SECRET_KEY")
    error = await start_error(database_url)
    assert isinstance(error, SecretKeyError) and "1 live key(s) require signatures" in str(error)
    monkeypatch.setenv("OMIXA_SECRET_KEY", Fernet.generate_key().decode())
    error = await start_error(database_url)
    assert isinstance(error, SecretKeyError) and "does not decrypt" in str(error)
    # A new server key first and the old one after it: the stored secrets stay readable.
    monkeypatch.setenv("OMIXA_SECRET_KEY", f"{Fernet.generate_key().decode()},{secret_key}")
    async with open_gateway(database_url, deployments=[]):
        pass


def doc_recipe() -> str:
    text = API_DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- signing-recipe:[^>]*-->\n```sh\n(.*?)```", text, re.S)
    assert match, "docs/api.md lost its marked signing recipe"
    return match[1]


async def test_the_shell_recipe_in_the_docs_works(database_url, secret_key):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, security={"require_signature": True}) as gw:
        _, _, key, signing = await signed_account(gw)
        env = {**os.environ, "OMIXA_BASE_URL": gw.base_url, "OMIXA_API_KEY": key, "OMIXA_SIGNING_SECRET": signing}
        result = await trio.run_process(
            ["bash", "-euo", "pipefail", "-c", doc_recipe()],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
        )
        completion, wallet = [json.loads(line) for line in result.stdout.decode().splitlines()]
        assert completion["object"] == "chat.completion", completion
        assert completion["choices"][0]["message"]["content"] == fake.reply
        assert wallet["object"] == "wallet", wallet
        assert len(fake.requests) == 1


async def test_signed_polling_without_a_nonce_is_served_and_one_time_mode_refuses_it(tmp_path, secret_key):
    """The API docs' signed string has no nonce: signing ``GET /api/v1/wallet`` once and
    sending it twice in the same second (polling, or an immediate retry) gets two answers.
    With one_time_signatures, a nonce is required and each signed request is served once."""
    url = f"sqlite:///{tmp_path / 'omixa.db'}"
    async with open_gateway(url, deployments=[], security={"require_signature": True}) as gw:
        _, _, key, signing = await signed_account(gw)
        headers = {"Authorization": f"Bearer {key}", **signature_headers(signing, "GET", "/api/v1/wallet")}
        del headers["X-Omixa-Nonce"]
        ts = headers["X-Omixa-Timestamp"]
        headers["X-Omixa-Signature"] = sign(signing, signed_message(ts, "GET", "/api/v1/wallet", b""))
        async with httpx.AsyncClient() as client:
            for _ in range(2):
                response = await client.get(f"{gw.base_url}/wallet", headers=headers)
                assert response.status_code == 200, response.text
    async with open_gateway(
        url, deployments=[], security={"require_signature": True, "one_time_signatures": True}
    ) as gw:
        async with httpx.AsyncClient() as client:
            check_envelope(await client.get(f"{gw.base_url}/wallet", headers=headers), 401, "missing_signature")
            once = {"Authorization": f"Bearer {key}", **signature_headers(signing, "GET", "/api/v1/wallet")}
            assert (await client.get(f"{gw.base_url}/wallet", headers=once)).status_code == 200
            check_envelope(await client.get(f"{gw.base_url}/wallet", headers=once), 401, "replayed_request")
