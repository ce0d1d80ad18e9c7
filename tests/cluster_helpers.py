"""Several ``omixa serve`` processes on one PostgreSQL and one Redis, as separate hosts would
run them, in front of one fake Azure."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from demo_helpers import OMIXA, read_values

from omixa.engine.accounts import Accounts
from omixa.storage import open_storage


def cluster_config(
    path: Path, database_url: str, redis_url: str, fake: Any, deployment: str = "", extra: str = ""
) -> Path:
    """A config for every process: the database, Redis, fast heartbeats, no default key
    limits, and one Azure deployment with ``deployment``'s extra lines."""
    path.write_text(
        f'[storage]\nurl = "{database_url}"\n'
        f'[cluster]\nredis_url = "{redis_url}"\n'
        "[wallet]\ninstance_heartbeat_seconds = 1\ninstance_stale_seconds = 3\n"
        "[limits]\nkey_rpm = 0\n"
        "[server]\nshutdown_grace_seconds = 2\n"
        f"{extra}\n"
        f'[[deployments]]\nname = "e1"\nmodel = "gpt-4o-mini"\nendpoint = "{fake.endpoint}"\n'
        f'deployment = "d"\napi_key = "env:FAKE_AZURE_KEY"\n{deployment}\n'
    )
    return path


async def funded_key(database_url: str, loop: Any, nano_usd: int = 5_000_000_000, **key: Any) -> tuple[str, str]:
    """A new account with ``nano_usd`` (billionths of a dollar) and a key: (account id, API key)."""
    async with open_storage(database_url, loop=loop) as storage:
        accounts = Accounts(storage)
        account = await accounts.create_account("dev@example.com")
        await storage.top_up(account.id, nano_usd)
        return account.id, (await accounts.create_key(account.id, **key)).secret


@asynccontextmanager
async def serve_processes(
    config: Path, count: int, fake: Any, *, args: tuple[str, ...] = ()
) -> AsyncIterator[list[trio.Process]]:
    """Start ``count`` ``omixa serve`` processes (each ``process.base_url`` set once it serves);
    SIGINT them at the end (SIGKILL after 20 s)."""
    env = {**os.environ, "FAKE_AZURE_KEY": fake.api_key}
    processes: list[Any] = []
    try:
        for _ in range(count):
            processes.append(
                await trio.lowlevel.open_process(
                    [OMIXA, "serve", "--config", str(config), "--port", "0", *args], stdout=subprocess.PIPE, env=env
                )
            )
        for process in processes:
            process.base_url = (await read_values(process, {"OMIXA_BASE_URL"}))["OMIXA_BASE_URL"]
        yield processes
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
        with trio.move_on_after(20):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def chat(client: httpx.AsyncClient, base_url: str, key: str, **body: Any) -> httpx.Response:
    return await client.post(
        f"{base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, **body},
    )


def upstream_chats(fake: Any, since: float = 0.0) -> list[Any]:
    """The chat requests the fake received (after ``since``, time.monotonic())."""
    return [r for r in fake.requests if r.operation == "chat/completions" and r.at > since]
