"""The operator's side of signatures: ``omixa key create``/``rotate-secret`` and ``serve``'s
start-up check, as real processes on both backends."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import trio
from cryptography.fernet import Fernet
from test_cli import OMIXA, read_values, run, values, write_config

from omixa_client import OmixaSigner


def cli(*args: str, **kw):
    return trio.to_thread.run_sync(lambda: run(*args, **kw))


async def test_key_create_prints_a_signing_secret_only_with_a_server_key(database_url, tmp_path):
    config = write_config(tmp_path / "omixa.toml", database_url)
    account = values((await cli("account", "create", "ops@example.com", config=config)).stdout)["OMIXA_ACCOUNT_ID"]
    server_key = {"OMIXA_SECRET_KEY": Fernet.generate_key().decode()}

    signed = await cli("key", "create", account, "--require-signature", config=config, env=server_key)
    assert signed.returncode == 0, signed.stderr
    lines = signed.stdout.splitlines()
    assert lines[0].startswith("OMIXA_KEY_ID=key_") and lines[1].startswith("OMIXA_API_KEY=omx_live_")
    assert (
        lines[2].startswith("OMIXA_SIGNING_SECRET=omx_sig_")
        and len(lines[2]) == len("OMIXA_SIGNING_SECRET=omx_sig_") + 43
    )
    assert "not shown again" in signed.stderr

    # Without OMIXA_SECRET_KEY: the same two lines as ever, no secret, and a note saying why.
    plain = await cli("key", "create", account, config=config, env={"OMIXA_SECRET_KEY": ""})
    assert plain.returncode == 0, plain.stderr
    assert [line.split("=")[0] for line in plain.stdout.splitlines()] == ["OMIXA_KEY_ID", "OMIXA_API_KEY"]
    assert "no signing secret was issued" in plain.stderr
    refused = await cli("key", "create", account, "--require-signature", config=config, env={"OMIXA_SECRET_KEY": ""})
    assert refused.returncode == 2 and "needs OMIXA_SECRET_KEY" in refused.stderr
    malformed = await cli("key", "create", account, config=config, env={"OMIXA_SECRET_KEY": "abc"})
    assert malformed.returncode == 2 and "not a Fernet key" in malformed.stderr

    # rotate-secret issues a secret to a key that had none, and a new one to a key that had one.
    plain_id = values(plain.stdout)["OMIXA_KEY_ID"]
    rotated = await cli("key", "rotate-secret", plain_id, config=config, env=server_key)
    assert rotated.returncode == 0, rotated.stderr
    assert values(rotated.stdout)["OMIXA_SIGNING_SECRET"].startswith("omx_sig_")
    again = await cli("key", "rotate-secret", plain_id, "--grace-seconds", "60", config=config, env=server_key)
    assert again.returncode == 0 and "keeps working for 60 seconds" in again.stderr
    assert values(again.stdout)["OMIXA_SIGNING_SECRET"] != values(rotated.stdout)["OMIXA_SIGNING_SECRET"]
    assert (await cli("key", "rotate-secret", "key_nope", config=config, env=server_key)).returncode == 2
    blind = await cli("key", "rotate-secret", plain_id, config=config, env={"OMIXA_SECRET_KEY": ""})
    assert blind.returncode == 2 and "OMIXA_SECRET_KEY" in blind.stderr


async def test_serve_refuses_required_signatures_without_a_server_key(tmp_path):
    config = write_config(
        tmp_path / "omixa.toml", f"sqlite:///{tmp_path / 'o.db'}", "[security]\nrequire_signature = true\n"
    )
    refused = await cli("serve", "--port", "0", config=config, env={"OMIXA_SECRET_KEY": ""})
    assert refused.returncode == 2
    assert "OMIXA_SECRET_KEY is not set" in refused.stderr and "Traceback" not in refused.stderr
    bad_env = await cli("serve", "--port", "0", config=config, env={"OMIXA_REQUIRE_SIGNATURE": "maybe"})
    assert bad_env.returncode == 2 and "OMIXA_REQUIRE_SIGNATURE: expected true or false" in bad_env.stderr


async def test_demo_prints_a_signing_secret_when_a_server_key_is_set(tmp_path):
    env = {**os.environ, "OMIXA_SECRET_KEY": Fernet.generate_key().decode(), "OMIXA_REQUIRE_SIGNATURE": "true"}
    process = await trio.lowlevel.open_process(
        [OMIXA, "demo", "--port", "0", "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        found = await read_values(process, {"OMIXA_BASE_URL", "OMIXA_API_KEY", "OMIXA_SIGNING_SECRET"})
        auth = {"Authorization": f"Bearer {found['OMIXA_API_KEY']}"}
        async with httpx.AsyncClient(auth=OmixaSigner(found["OMIXA_SIGNING_SECRET"])) as signed:
            assert (await signed.get(f"{found['OMIXA_BASE_URL']}/wallet", headers=auth)).status_code == 200
        async with httpx.AsyncClient() as unsigned:
            response = await unsigned.get(f"{found['OMIXA_BASE_URL']}/wallet", headers=auth)
            assert response.status_code == 401 and response.json()["error"]["code"] == "missing_signature"
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
