"""Key hygiene: after a run that creates keys, signs requests and makes errors happen, neither a
plain API key nor a plain signing secret is in the database or in any log.

Everything runs as an operator runs it: the ``omixa`` CLI in real processes, ``omixa serve``
with its stderr (the log) captured to a file, a fake Azure upstream, both backends. The
database is dumped whole: SQLite with ``iterdump``, PostgreSQL every table of every schema
read through asyncpg, plus ``pg_dump`` when it is installed and matches the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess

import asyncpg
import httpx
import trio
import trio_asyncio
from cryptography.fernet import Fernet
from fake_azure import open_fake_azure
from test_cli import OMIXA, read_values, run, values, write_config

from omixa_client import signature_headers

MESSAGES = [{"role": "user", "content": "hi"}]


async def dump_database(database_url: str) -> str:
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()

    async def read_all() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            tables = await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            parts = []
            for t in tables:
                rows = await conn.fetch(f'SELECT r::text FROM "{t[0]}"."{t[1]}" r')
                parts.append(f"-- {t[0]}.{t[1]}\n" + "\n".join(r[0] for r in rows))
            return "\n".join(parts)
        finally:
            await conn.close()

    async with trio_asyncio.open_loop():
        text = await trio_asyncio.aio_as_trio(read_all)()
    if shutil.which("pg_dump"):
        dumped = await trio.run_process(
            ["pg_dump", "--data-only", database_url], capture_stdout=True, capture_stderr=True, check=False
        )
        if dumped.returncode == 0:  # a pg_dump older than the server refuses; the rows above suffice
            text += "\n" + dumped.stdout.decode()
    return text


async def test_no_plain_key_or_signing_secret_in_database_or_logs(database_url, tmp_path):
    env = {"OMIXA_SECRET_KEY": Fernet.generate_key().decode(), "OMIXA_REQUIRE_SIGNATURE": "true"}
    secrets_seen: list[str] = []  # every plain key and signing secret this run produced
    logs: list[str] = []  # stderr of every command

    async with open_fake_azure() as fake:
        config = write_config(
            tmp_path / "omixa.toml",
            database_url,
            f'[[deployments]]\nname = "e1"\nmodel = "gpt-4o-mini"\nendpoint = "{fake.endpoint}"\n'
            f'deployment = "d"\napi_key = "env:FAKE_AZURE_KEY"\n',
        )

        async def cli(*args: str) -> dict[str, str]:
            done = await trio.to_thread.run_sync(lambda: run(*args, config=config, env=env))
            assert done.returncode == 0, done.stderr
            logs.append(done.stderr)
            return values(done.stdout)

        account = (await cli("account", "create", "hygiene@example.com"))["OMIXA_ACCOUNT_ID"]
        await cli("wallet", "top-up", account, "5")
        created = await cli("key", "create", account, "--require-signature")
        key_id, key, first_secret = created["OMIXA_KEY_ID"], created["OMIXA_API_KEY"], created["OMIXA_SIGNING_SECRET"]
        secret = (await cli("key", "rotate-secret", key_id, "--grace-seconds", "600"))["OMIXA_SIGNING_SECRET"]
        doomed = await cli("key", "create", account)
        await cli("key", "revoke", doomed["OMIXA_KEY_ID"])
        secrets_seen += [key, first_secret, secret, doomed["OMIXA_API_KEY"], doomed["OMIXA_SIGNING_SECRET"]]

        log_file = tmp_path / "serve.log"
        with open(log_file, "wb") as stderr:
            process = await trio.lowlevel.open_process(
                [OMIXA, "serve", "--config", str(config), "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **env, "FAKE_AZURE_KEY": fake.api_key},
            )
            try:
                base = (await read_values(process, {"OMIXA_BASE_URL"}))["OMIXA_BASE_URL"]
                responses = await exercise(base, key, secret, first_secret, doomed["OMIXA_API_KEY"], fake)
                process.send_signal(signal.SIGINT)
                with trio.fail_after(20):
                    assert await process.wait() == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        logs.append(log_file.read_text())

    dump = await dump_database(database_url)
    everything_logged = "\n".join(logs)
    # The capture is real: the dump holds the key's hash and display prefix, the log a request line.
    assert hashlib.sha256(key.encode()).hexdigest() in dump and key[:15] in dump
    assert f"account={account}" in everything_logged and "status=upstream_error" in everything_logged
    for plain in secrets_seen:
        assert plain not in dump
        assert plain not in everything_logged
        assert plain[9:] not in dump and plain[9:] not in everything_logged  # not even without its prefix
        for response in responses:
            assert plain not in response


async def exercise(base: str, key: str, secret: str, old_secret: str, revoked: str, fake) -> list[str]:
    """Signed calls that succeed, stream, fail upstream and are refused; the response texts."""
    path = "/api/v1/chat/completions"
    origin = base.removesuffix("/api/v1")
    texts = []

    async with httpx.AsyncClient(timeout=30) as client:

        async def post(
            body: dict, headers: dict[str, str] | None = None, signer: str | None = secret
        ) -> httpx.Response:
            raw = json.dumps(body).encode()
            signed = signature_headers(signer, "POST", path, raw) if signer else {}
            response = await client.post(
                origin + path,
                content=raw,
                headers={"Authorization": f"Bearer {key}", **signed, **(headers or {})},
            )
            texts.append(response.text)
            return response

        assert (await post({"model": "gpt-4o-mini", "messages": MESSAGES})).status_code == 200
        assert (await post({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})).status_code == 200
        assert (await post({"model": "gpt-4o-mini", "messages": MESSAGES}, signer=old_secret)).status_code == 200
        fake.fail_next(500, count=3)
        assert (await post({"model": "gpt-4o-mini", "messages": MESSAGES})).status_code == 502
        assert (await post({"model": "gpt-4o-mini", "messages": MESSAGES}, signer=None)).status_code == 401
        assert (await post({"model": "gpt-4o-mini", "messages": MESSAGES}, signer="omx_sig_wrong")).status_code == 401
        assert (await post({"model": "nope", "messages": MESSAGES})).status_code == 404
        # A key pasted where the body should be, and a revoked key: refused without echoing either.
        assert (await post({"model": key, "messages": [{"role": "user", "content": secret}]})).status_code == 404
        assert (
            await post({"model": "gpt-4o-mini", "messages": MESSAGES}, headers={"Authorization": f"Bearer {revoked}"})
        ).status_code == 401
        replayed = signature_headers(secret, "GET", "/api/v1/wallet")
        for expected in (200, 401):
            response = await client.get(base + "/wallet", headers={"Authorization": f"Bearer {key}", **replayed})
            assert response.status_code == expected
            texts.append(response.text)
    return texts
