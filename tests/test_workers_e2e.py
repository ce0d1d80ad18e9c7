"""``omixa serve --workers 3``: one port, three supervised gateway processes.

With Redis the workers count every limit together; without, each admits its share. A worker
killed with SIGKILL mid-stream is started again, its hold is released by the others, and
they never stop serving; SIGTERM drains them all."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import asyncpg
import httpx
import pytest
import trio
import trio_asyncio
from cluster_helpers import chat, cluster_config, funded_key, serve_processes, upstream_chats
from fake_azure import open_fake_azure
from harness import ledger_verify_cli
from test_cli import OMIXA, read_values
from test_cluster_e2e import assert_only_no_room, burst

from omixa.storage import open_storage

pytestmark = pytest.mark.slow


async def worker_pids(database_url: str, aio_loop) -> set[int]:
    async with open_storage(database_url, loop=aio_loop) as storage:
        return {instance.pid for instance in await storage.list_instances()}


async def holding_pid(database_url: str, aio_loop, request_id: str) -> int:
    """The pid of the worker whose pending hold is the request's."""

    async def query() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval(
                "SELECT i.pid FROM holds h JOIN instances i ON i.id = h.instance_id "
                "WHERE h.state = 'pending' AND h.request_id = $1",
                request_id,
            )
        finally:
            await conn.close()

    return await trio_asyncio.aio_as_trio(query, loop=aio_loop)()


async def test_three_workers_with_redis_keep_the_upstream_within_its_rpm(
    postgres_url, redis_server, aio_loop, tmp_path
):
    async with open_fake_azure() as fake:
        config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake, "rpm = 30")
        _, key = await funded_key(postgres_url, aio_loop)
        async with serve_processes(config, 1, fake, args=("--workers", "3")) as (supervisor,):
            assert len(await worker_pids(postgres_url, aio_loop)) == 3
            responses = await burst([supervisor], key, 200)
            ok = [r for r in responses if r.status_code == 200]
            assert len(upstream_chats(fake)) == len(ok) <= 30 and len(ok) >= 20
            assert_only_no_room(responses)
        assert supervisor.returncode == 0  # SIGINT drained every worker
        assert await worker_pids(postgres_url, aio_loop) == set()  # each deregistered


async def test_three_workers_without_redis_admit_a_share_each_and_say_so(postgres_url, aio_loop, tmp_path):
    async with open_fake_azure() as fake:
        config = tmp_path / "omixa.toml"
        config.write_text(
            f'[storage]\nurl = "{postgres_url}"\n[limits]\nkey_rpm = 0\n'
            f'[[deployments]]\nname = "e1"\nmodel = "gpt-4o-mini"\nendpoint = "{fake.endpoint}"\n'
            f'deployment = "d"\napi_key = "env:FAKE_AZURE_KEY"\nrpm = 7\n'
        )
        _, key = await funded_key(postgres_url, aio_loop)
        log = tmp_path / "stderr.log"
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                [OMIXA, "serve", "--config", str(config), "--port", "0", "--workers", "3"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "FAKE_AZURE_KEY": fake.api_key},
            )
            try:
                process.base_url = (await read_values(process, {"OMIXA_BASE_URL"}))["OMIXA_BASE_URL"]
                responses = await burst([process], key, 60, concurrency=30)
                assert sum(r.status_code == 200 for r in responses) == len(upstream_chats(fake)) <= 7
                assert_only_no_room(responses)
            finally:
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    assert await process.wait() == 0
        text = log.read_text()
        assert "3 workers without [cluster] redis_url: each admits 1/3" in text


async def test_a_worker_killed_mid_stream_is_restarted_and_its_hold_released(
    postgres_url, redis_server, aio_loop, tmp_path
):
    async with open_fake_azure(reply="slow " * 400, chunk_delay=0.05) as fake:
        config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake)
        account_id, key = await funded_key(postgres_url, aio_loop)
        async with serve_processes(config, 1, fake, args=("--workers", "3")) as (supervisor,):
            before = await worker_pids(postgres_url, aio_loop)
            assert len(before) == 3
            served: list[tuple[float, int | str]] = []
            stop = trio.Event()
            killed_at = float("inf")

            async def keep_asking() -> None:
                # Other requests keep going through the kill. One the killed worker was
                # answering at that instant loses its connection (no process can finish
                # it); every request sent after the kill is served.
                async with httpx.AsyncClient(timeout=30) as client:
                    while not stop.is_set():
                        started = time.monotonic()
                        try:
                            status: int | str = (await chat(client, supervisor.base_url, key, max_tokens=3)).status_code
                        except httpx.TransportError:
                            status = "dropped"
                        served.append((started, status))
                        await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_asking)
                async with httpx.AsyncClient(timeout=30) as client:
                    async with client.stream(
                        "POST",
                        f"{supervisor.base_url}/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                    ) as response:
                        lines = response.aiter_lines()  # kept: a dropped iterator closes the stream
                        async for line in lines:
                            if '"content":"slow' in line:
                                break  # flowing: money is held by one worker
                        pid = await holding_pid(postgres_url, aio_loop, response.headers["x-request-id"])
                        killed_at = time.monotonic()
                        os.kill(pid, signal.SIGKILL)
                # The others release the dead worker's hold (its pid is gone) within the
                # stale bound; the supervisor starts a fourth pid.
                with trio.fail_after(3 + 5):
                    async with open_storage(postgres_url, loop=aio_loop) as storage:
                        while (await storage.get_wallet(account_id)).locked:
                            await trio.sleep(0.1)
                assert time.monotonic() - killed_at <= 3 + 1
                with trio.fail_after(30):
                    while len(after := await worker_pids(postgres_url, aio_loop)) != 3 or pid in after:
                        await trio.sleep(0.2)
                assert len(after - before) == 1
                await trio.sleep(0.5)
                stop.set()
            after_kill = [status for started, status in served if started > killed_at]
            dropped = [started for started, status in served if status == "dropped"]
            assert after_kill and set(after_kill) == {200}, served
            assert len(dropped) <= 1 and all(started <= killed_at for started in dropped), served
            assert {status for _, status in served} <= {200, "dropped"}, served
        assert supervisor.returncode == 0
        async with open_storage(postgres_url, loop=aio_loop) as storage:
            assert await storage.verify_ledger() == []
        await ledger_verify_cli(postgres_url, tmp_path)
