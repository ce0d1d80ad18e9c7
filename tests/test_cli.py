"""The ``omixa`` command as an operator runs it: real processes, real config files, both backends."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from demo_helpers import OMIXA, read_values, values
from fake_azure import open_fake_azure


def run(*args: str, config: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [OMIXA, *args] + (["--config", str(config)] if config else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def write_config(path: Path, database_url: str, extra: str = "") -> Path:
    path.write_text(f'[storage]\nurl = "{database_url}"\n{extra}')
    return path


async def test_account_key_wallet_and_ledger_commands(database_url, tmp_path):
    config = write_config(tmp_path / "omixa.toml", database_url)
    created = await trio.to_thread.run_sync(lambda: run("account", "create", "ops@example.com", config=config))
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("OMIXA_ACCOUNT_ID=acct_")
    account = values(created.stdout)["OMIXA_ACCOUNT_ID"]

    key = run("key", "create", account, config=config)
    assert key.returncode == 0, key.stderr
    lines = key.stdout.splitlines()
    assert lines[0].startswith("OMIXA_KEY_ID=key_") and lines[1].startswith("OMIXA_API_KEY=omx_live_")
    assert len(values(key.stdout)["OMIXA_API_KEY"]) >= len("omx_live_") + 43  # 256 random bits

    for amount, balance in (("10", "10.00"), ("0.25", "10.25")):
        topped = run("wallet", "top-up", account, amount, config=config)
        assert topped.returncode == 0, topped.stderr
        assert values(topped.stdout)["OMIXA_BALANCE"] == balance
    bad = run("wallet", "top-up", account, "-3", config=config)
    assert bad.returncode == 2 and "positive" in bad.stderr
    missing = run("wallet", "top-up", "acct_nope", "1", config=config)
    assert missing.returncode == 2

    verified = run("ledger", "verify", config=config)
    assert verified.returncode == 0, verified.stderr

    revoked = run("key", "revoke", values(key.stdout)["OMIXA_KEY_ID"], config=config)
    assert revoked.returncode == 0, revoked.stderr
    assert run("key", "revoke", "key_nope", config=config).returncode == 2

    if database_url.startswith("sqlite:///"):
        db = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        db.execute("UPDATE accounts SET balance = balance + 1")
        db.commit()
        db.close()
        broken = run("ledger", "verify", config=config)
        assert broken.returncode == 1 and account in broken.stderr


def test_config_from_environment_and_database_url_override(tmp_path):
    db = tmp_path / "env.db"
    config = write_config(tmp_path / "c.toml", "sqlite:///relative.db")
    created = run("account", "create", "a@example.com", env={"OMIXA_CONFIG": str(config)})
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "relative.db").exists()  # relative to the config file's folder
    created = run("account", "create", "b@example.com", config=config, env={"OMIXA_DATABASE_URL": f"sqlite:///{db}"})
    assert created.returncode == 0 and db.exists()
    # Commands that never call upstream do not need the upstream keys' variables.
    config.write_text(
        config.read_text() + '[[deployments]]\nname = "a"\nmodel = "gpt-4o"\nendpoint = "https://x"\n'
        'deployment = "d"\napi_key = "env:OMIXA_TEST_UNSET_VAR"\n'
    )
    assert run("ledger", "verify", config=config).returncode == 0


@pytest.mark.parametrize(
    "body, where",
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ('[server]\nport = "80"\n', "server.port"),
        ("[wallet]\nmin_output_tokens = true\n", "wallet.min_output_tokens"),
        (
            '[[deployments]]\nname = "a"\nmodel = "gpt-4o"\nendpoint = "https://x"\ndeployment = "d"\napi_key = "k"\nrpm = -5\n',
            "deployments[0].rpm",
        ),
        (
            '[[deployments]]\nname = "a"\nmodel = "gpt-4o"\nendpoint = "https://x"\ndeployment = "d"\napi_key = "env:OMIXA_TEST_UNSET_VAR"\n',
            "deployments[0].api_key",
        ),
    ],
)
def test_bad_config_stops_with_the_key_path(tmp_path, body, where):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    result = run("serve", "--port", "0", config=config)
    assert result.returncode == 2
    assert where in result.stderr


def test_add_azure_deployment_creates_and_keeps_comments(tmp_path):
    config = tmp_path / "sub" / "omixa.toml"
    args = (
        "add-azure-deployment",
        "gpt-4o-mini",
        "eastus-key-1",
        "https://res.openai.azure.com",
        "gpt-4o-mini",
        "env:AZ_KEY",
    )
    first = run(
        *args, "--region", "eastus", "--rpm", "120", "--tpm", "200000", "--hourly-tokens", "1000000", config=config
    )
    assert first.returncode == 0, first.stderr
    text = config.read_text()
    assert 'name = "eastus-key-1"' in text and "hourly_tokens = 1000000" in text and 'api_key = "env:AZ_KEY"' in text

    config.write_text("# operator's note: keep me\n" + text.replace("rpm = 120", "rpm = 120 # tuned"))
    second = run(
        "add-azure-deployment",
        "gpt-4.1",
        "westus-1",
        "http://127.0.0.1:9999",
        "gpt-4.1",
        "k2",
        "--priority",
        "--weight",
        "2",
        config=config,
    )
    assert second.returncode == 0, second.stderr
    text = config.read_text()
    assert "# operator's note: keep me" in text and "rpm = 120 # tuned" in text
    assert 'name = "westus-1"' in text and "priority = true" in text

    # Priority needs the model's priority prices, so the tier Azure reports can be billed.
    no_tier = run("add-azure-deployment", "gpt-4o", "westus-2", "https://x", "gpt-4o", "k", "--priority", config=config)
    assert no_tier.returncode == 2 and "priority" in no_tier.stderr and "westus-2" not in config.read_text()
    duplicate = run(*args, config=config)
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr
    unknown = run("add-azure-deployment", "gpt-9", "n", "https://x", "d", "k", config=config)
    assert unknown.returncode == 2 and "gpt-9" in unknown.stderr
    bad = run("add-azure-deployment", "gpt-4o", "n2", "ftp://x", "d", "k", config=config)
    assert bad.returncode == 2 and "endpoint" in bad.stderr


async def test_serve_prints_its_url_and_stops_gracefully_on_sigint(database_url, tmp_path):
    async with open_fake_azure() as fake:
        config = write_config(
            tmp_path / "omixa.toml",
            database_url,
            f'[[deployments]]\nname = "e1"\nmodel = "gpt-4o-mini"\nendpoint = "{fake.endpoint}"\n'
            f'deployment = "d"\napi_key = "env:FAKE_AZURE_KEY"\n',
        )
        env = {**os.environ, "FAKE_AZURE_KEY": fake.api_key}
        process = await trio.lowlevel.open_process(
            [OMIXA, "serve", "--config", str(config), "--port", "0"], stdout=subprocess.PIPE, env=env
        )
        try:
            found = await read_values(process, {"OMIXA_BASE_URL"})
            base = found["OMIXA_BASE_URL"]
            assert base.startswith("http://127.0.0.1:") and base.endswith("/api/v1")
            async with httpx.AsyncClient() as client:
                health = await client.get(base.removesuffix("/api/v1") + "/healthz")
                assert health.status_code == 200
            process.send_signal(signal.SIGINT)
            with trio.fail_after(20):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def test_env_secrets_are_needed_only_where_the_server_runs(tmp_path):
    config = write_config(
        tmp_path / "omixa.toml",
        f"sqlite:///{tmp_path / 'o.db'}",
        '[[deployments]]\nname = "e1"\nmodel = "gpt-4o-mini"\nendpoint = "https://x.openai.azure.com"\n'
        'deployment = "d"\napi_key = "env:OMIXA_TEST_UNSET_KEY"\n',
    )
    env = {k: v for k, v in os.environ.items() if k != "OMIXA_TEST_UNSET_KEY"}
    created = subprocess.run(
        [OMIXA, "account", "create", "ops@example.com", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert created.returncode == 0, created.stderr
    served = subprocess.run(
        [OMIXA, "serve", "--config", str(config), "--port", "0"], capture_output=True, text=True, timeout=60, env=env
    )
    assert served.returncode != 0
    assert "deployments[0].api_key: environment variable OMIXA_TEST_UNSET_KEY is not set" in served.stderr
