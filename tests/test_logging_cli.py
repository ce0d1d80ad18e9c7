"""``[logging]`` as an operator sets it: real ``omixa`` processes writing their stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import pytest
import trio
from cluster_helpers import funded_key
from demo_helpers import OMIXA, read_values
from fake_azure import open_fake_azure
from test_cli import run, write_config


def test_a_bad_logging_format_stops_the_command_naming_the_key(tmp_path):
    config = write_config(tmp_path / "omixa.toml", f"sqlite:///{tmp_path / 'o.db'}", '[logging]\nformat = "xml"\n')
    refused = run("account", "create", "ops@example.com", config=config)
    assert refused.returncode == 2
    assert refused.stderr == "omixa: logging.format: must be one of 'text', 'json', got 'xml'\n"
    assert not (tmp_path / "o.db").exists()  # refused before anything was opened


def test_a_command_logs_in_the_configured_format_and_level(tmp_path):
    """At DEBUG even a command that serves nothing has a line to write (the asyncio loop
    that storage opens says which selector it uses): as JSON; at WARNING, none."""
    database = f"sqlite:///{tmp_path / 'o.db'}"
    loud = write_config(tmp_path / "loud.toml", database, '[logging]\nformat = "json"\nlevel = "debug"\n')
    created = run("account", "create", "a@example.com", config=loud)
    assert created.returncode == 0, created.stderr
    lines = [json.loads(line) for line in created.stderr.splitlines()]  # every line is one JSON object
    assert any(line["level"] == "DEBUG" and line["logger"] == "asyncio" for line in lines), lines
    quiet = write_config(tmp_path / "quiet.toml", database, '[logging]\nformat = "json"\nlevel = "warning"\n')
    assert run("account", "create", "b@example.com", config=quiet).stderr == ""


@pytest.mark.slow
async def test_serve_with_workers_writes_every_line_as_json(postgres_url, aio_loop, tmp_path):
    """The supervisor and each worker of ``omixa serve --workers 2`` write JSON lines, a
    worker's naming it; the request line carries its fields and the upstream's id."""
    async with open_fake_azure() as fake:
        config = write_config(
            tmp_path / "omixa.toml",
            postgres_url,
            '[logging]\nformat = "json"\n[server]\nshutdown_grace_seconds = 2\n'
            f'[[deployments]]\nname = "e1"\nmodel = "gpt-4o-mini"\nendpoint = "{fake.endpoint}"\n'
            'deployment = "d"\napi_key = "env:FAKE_AZURE_KEY"\nregion = "eastus"\n',
        )
        account, key = await funded_key(postgres_url, aio_loop)
        stderr_path = tmp_path / "stderr.log"
        with stderr_path.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                [OMIXA, "serve", "--config", str(config), "--port", "0", "--workers", "2"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "FAKE_AZURE_KEY": fake.api_key},
            )
            try:
                base_url = (await read_values(process, {"OMIXA_BASE_URL"}))["OMIXA_BASE_URL"]
                async with httpx.AsyncClient(timeout=30) as client:
                    answer = await client.post(
                        f"{base_url}/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
                    )
                assert answer.status_code == 200, answer.text
            finally:
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    assert await process.wait() == 0
    lines = [json.loads(line) for line in stderr_path.read_text().splitlines()]  # each parses alone
    assert {line.get("worker") for line in lines} == {None, 0, 1}  # the supervisor's, each worker's
    (request,) = [line for line in lines if line["logger"] == "omixa.request"]
    sent = fake.requests[-1]
    assert request["request_id"] == answer.headers["x-request-id"] == sent.headers["x-ms-client-request-id"]
    assert (request["upstream_request_id"], request["account_id"], request["deployment"], request["status"]) == (
        sent.upstream_id, account, "e1", "ok")  # fmt: skip
    assert request["worker"] in (0, 1)
    # Hypercorn's lines come once each, through the same handler.
    running = [line for line in lines if line["logger"] == "hypercorn.error" and "Running on" in line["message"]]
    assert sorted(line["worker"] for line in running) == [0, 1]
