"""Usage records and holds survive what a real deployment meets: a database that is briefly
unavailable, a bounded buffer that fills, and a process killed with SIGKILL mid-stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
import trio
from conftest import PG_URL
from demo_helpers import OMIXA, read_values
from fake_azure import open_fake_azure
from harness import open_gateway
from test_cli import write_config

from omixa.engine.accounts import Accounts
from omixa.engine.config import UsageConfig
from omixa.engine.usage import UsageAggregator
from omixa.storage import HoldContext, Instance, RequestLog, RequestLogFilter, open_storage

pytestmark = pytest.mark.slow


def _log(i: int, account_id: str) -> RequestLog:
    return RequestLog(
        id=f"req_outage_{i:03d}",
        account_id=account_id,
        key_id="key_x",
        model="gpt-4o-mini",
        provider="azure",
        deployment="eastus-1",
        region="eastus",
        status="ok",
        stream=False,
        prompt_tokens=10,
        completion_tokens=5,
        reasoning_tokens=0,
        cached_tokens=0,
        cost=7,
        latency_ms=100 + i,
        ttft_ms=None,
        created_at=dt.datetime.now(dt.UTC),
    )


@asynccontextmanager
async def database_outage(database_url: str) -> AsyncIterator[None]:
    """Make the database refuse work until the block ends.

    PostgreSQL: new connections are refused and open ones are terminated. SQLite: another
    connection holds the exclusive lock, so writes time out as "database is locked".
    """
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    name = database_url.rsplit("/", 1)[1]

    def admin(sql: str) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(PG_URL)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())

    await trio.to_thread.run_sync(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await trio.to_thread.run_sync(
        admin, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )
    try:
        yield
    finally:
        await trio.to_thread.run_sync(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def test_records_wait_out_an_outage_and_the_bound_drops_the_excess(database_url, aio_loop):
    async with open_storage(database_url, loop=aio_loop) as storage:
        account = await storage.create_account("dev@example.com")
        # The aggregator waiting for a record, a mailbox of 1 and a buffer of 3: of 10 records
        # handed over at once, 5 are kept.
        aggregator = UsageAggregator(storage, UsageConfig(queue_size=1, buffer_limit=3, flush_interval_seconds=0.05))
        async with trio.open_nursery() as nursery:
            await nursery.start(aggregator.run)
            async with database_outage(database_url):
                for i in range(10):
                    aggregator.record(_log(i, account.id))
                assert aggregator.dropped == 5
                await trio.sleep(1.0)  # writes fail and are retried meanwhile
                assert aggregator.written == 0
            with trio.fail_after(30):
                await aggregator.wait_flushed()
            # A second wave after the outage: nothing lost, nothing counted twice.
            for i in range(10, 15):
                aggregator.record(_log(i, account.id))
            aggregator.close()
        assert aggregator.written == 10 and aggregator.dropped == 5
        kept = [i for i in range(15) if await storage.get_request_log(f"req_outage_{i:03d}")]
        assert kept == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
        now = dt.datetime.now(dt.UTC)
        rows = await storage.usage_rollups(
            account.id, granularity="day", since=now - dt.timedelta(days=1), until=now + dt.timedelta(days=1)
        )
        assert sum(r.requests for r in rows) == 10 and sum(r.cost for r in rows) == 70


async def test_sigkill_mid_stream_leaves_no_locked_balance_after_restart(database_url, aio_loop, tmp_path):
    async with open_fake_azure(reply="slow " * 400, chunk_delay=0.05) as fake:
        config = write_config(
            tmp_path / "omixa.toml",
            database_url,
            f'[[deployments]]\nname = "e1"\nmodel = "gpt-4o-mini"\nendpoint = "{fake.endpoint}"\n'
            f'deployment = "d"\napi_key = "env:FAKE_AZURE_KEY"\n',
        )
        env = {**os.environ, "FAKE_AZURE_KEY": fake.api_key}
        async with open_storage(database_url, loop=aio_loop) as storage:
            accounts = Accounts(storage)
            account = await accounts.create_account("dev@example.com")
            await storage.top_up(account.id, 5_000_000_000)
            key = (await accounts.create_key(account.id)).secret

        async def start() -> tuple[trio.Process, str]:
            process = await trio.lowlevel.open_process(
                [OMIXA, "serve", "--config", str(config), "--port", "0"], stdout=subprocess.PIPE, env=env
            )
            return process, (await read_values(process, {"OMIXA_BASE_URL"}))["OMIXA_BASE_URL"]

        process, base = await start()
        request_id = None
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                async with client.stream(
                    "POST",
                    f"{base}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                ) as response:
                    request_id = response.headers["x-request-id"]
                    async for line in response.aiter_lines():
                        if '"content":"slow' in line:
                            break  # the stream is flowing: money is held
                    process.send_signal(signal.SIGKILL)
                    await process.wait()
        except httpx.HTTPError:
            pass  # the connection dies with the process
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert request_id is not None

        async with open_storage(database_url, loop=aio_loop) as storage:
            assert (await storage.get_wallet(account.id)).locked > 0  # the dead process's hold

        # The next start recovers it before serving.
        process, base = await start()
        try:
            async with open_storage(database_url, loop=aio_loop) as storage:
                wallet = await storage.get_wallet(account.id)
                assert wallet.locked == 0 and wallet.balance == 5_000_000_000
                log = await storage.get_request_log(request_id)
                assert log.status == "interrupted" and log.cost == 0 and log.stream is True
                assert log.model == "gpt-4o-mini"
                assert await storage.verify_ledger() == []
                types = [e.type for e in await storage.ledger_entries(account.id)]
                assert types == ["top_up", "hold", "release"]
            async with httpx.AsyncClient(timeout=30) as client:
                usage = await client.get(
                    f"{base}/usage/requests/{request_id}", headers={"Authorization": f"Bearer {key}"}
                )
                assert usage.json()["status"] == "interrupted"
        finally:
            process.send_signal(signal.SIGINT)
            with trio.fail_after(20):
                await process.wait()


async def test_a_running_gateway_releases_holds_of_a_silent_remote_process(database_url, aio_loop):
    """Across machines only the heartbeat (by the database's clock) tells: a process on
    another host that stops heartbeating loses its holds; while it heartbeats it keeps them."""
    host = "another-host|boot|pidns"  # not this process's namespace: its pid means nothing here
    async with open_storage(database_url, loop=aio_loop) as storage:
        account = await storage.create_account("dev@example.com")
        await storage.top_up(account.id, 5_000_000_000)
        now = dt.datetime.now(dt.UTC)
        instances = {}
        for instance_id in ("inst_silent", "inst_alive"):
            instances[instance_id] = Instance(
                id=instance_id, host=host, pid=os.getpid(), started_at=now, heartbeat_at=now
            )
            await storage.register_instance(instances[instance_id])
            await storage.create_hold(
                account_id=account.id,
                request_id=f"req_{instance_id}",
                amount=1_000_000_000,
                expires_at=now + dt.timedelta(hours=1),
                context=HoldContext(
                    instance_id=instance_id, key_id="key_r", model="gpt-4o-mini", provider="azure", stream=False
                ),
            )
        alive = trio.CancelScope()

        async def heartbeat() -> None:
            with alive:
                while True:
                    assert await storage.heartbeat_instance(instances["inst_alive"])
                    await trio.sleep(0.2)

        wallet_config = {"instance_heartbeat_seconds": 0.2, "instance_stale_seconds": 2}
        async with trio.open_nursery() as nursery:
            # The remote process heartbeats from before the gateway starts, so a slow start
            # can't make it look silent.
            nursery.start_soon(heartbeat)
            async with open_fake_azure() as fake, open_gateway(database_url, fake, wallet=wallet_config) as gw:
                with trio.fail_after(10):
                    while (await gw.storage.get_request_log("req_inst_silent")) is None:
                        await trio.sleep(0.1)
                assert (await gw.storage.get_request_log("req_inst_silent")).status == "interrupted"
                await trio.sleep(1.0)  # several more rounds: the heartbeating one is left alone
                assert (await gw.storage.get_wallet(account.id)).locked == 1_000_000_000
                assert await gw.storage.get_request_log("req_inst_alive") is None
                instances_left = {i.id for i in await gw.storage.list_instances()}
                assert instances_left == {"inst_alive", gw.engine.monitor.id}
                alive.cancel()  # it goes silent
                with trio.fail_after(10):
                    while (await gw.storage.get_wallet(account.id)).locked:
                        await trio.sleep(0.1)
                assert (await gw.storage.get_request_log("req_inst_alive")).status == "interrupted"
                assert await gw.storage.verify_ledger() == []
    async with open_storage(database_url, loop=aio_loop) as storage:
        assert await storage.list_instances() == []  # the gateway removed itself on stop


async def _books_balance(storage, account_id: str) -> int:
    """Assert that every charge of the account has its request log with the same cost, that
    the hourly and daily rollups sum to the same, and that no hold is pending; return the
    number of charged requests."""
    assert await storage.verify_ledger() == []
    assert (await storage.get_wallet(account_id)).locked == 0
    charges: dict[str, int] = {}
    for entry in await storage.ledger_entries(account_id):
        if entry.type == "charge":
            charges[entry.request_id] = charges.get(entry.request_id, 0) + entry.amount
    logged: dict[str, int] = {}
    before = None
    while True:
        page = await storage.list_request_logs(RequestLogFilter(account_id=account_id, limit=500, before=before))
        logged.update((log.id, log.cost) for log in page)
        if len(page) < 500:
            break
        before = (page[-1].created_at, page[-1].id)
    missing = sorted(set(charges) - set(logged))
    assert not missing, f"{len(missing)} of {len(charges)} charged requests have no request log"
    assert all(logged[request_id] == cost for request_id, cost in charges.items())
    total = sum(charges.values())
    assert sum(logged.values()) == total  # uncharged requests (errors, interrupted) cost 0
    now = dt.datetime.now(dt.UTC)
    for granularity in ("hour", "day"):
        rows = await storage.usage_rollups(
            account_id, granularity=granularity, since=now - dt.timedelta(days=2), until=now + dt.timedelta(days=1)
        )
        assert sum(row.cost for row in rows) == total
        assert sum(row.requests for row in rows) == len(logged)
    return len(charges)


async def test_sigkill_rounds_under_load_lose_no_record_of_a_charge(database_url, aio_loop, tmp_path):
    """Ten rounds of: serve; JSON and streamed chat calls from 16 clients; SIGKILL at a
    moment that varies; start again. The usage aggregator writes logs a second after their
    requests end, so every kill finds charged requests whose logs are only in memory: the
    copy each settle kept in its hold is what the next start writes. After every restart,
    charges = request logs = rollups to the nano-dollar, and no hold is pending."""
    config = write_config(
        tmp_path / "omixa.toml",
        database_url,
        "[usage]\nflush_interval_seconds = 1.0\n"
        '[[deployments]]\nname = "sim"\nmodel = "gpt-4o-mini"\nprovider = "simulator"\n'
        "sim_first_token_ms = 5\nsim_chunk_interval_ms = 2\nsim_completion_tokens = 24\n",
    )
    async with open_storage(database_url, loop=aio_loop) as storage:
        accounts = Accounts(storage)
        account = await accounts.create_account("load@example.com")
        await storage.top_up(account.id, 100 * 10**9)
        key = (await accounts.create_key(account.id, rpm=0)).secret

    async def start() -> tuple[trio.Process, str]:
        process = await trio.lowlevel.open_process(
            [OMIXA, "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return process, (await read_values(process, {"OMIXA_BASE_URL"}))["OMIXA_BASE_URL"]

    async def load(client: httpx.AsyncClient, base: str, n: int) -> None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {n}"}], "max_tokens": 20}
        for i in itertools.count():
            try:
                if (n + i) % 2:
                    async with client.stream("POST", f"{base}/chat/completions", json={**body, "stream": True}) as r:
                        async for _ in r.aiter_bytes():
                            pass
                else:
                    await client.post(f"{base}/chat/completions", json=body)
            except httpx.HTTPError:
                await trio.sleep(0.01)  # the server is gone: wait to be cancelled

    charged = []
    process, base = await start()
    try:
        for round_ in range(10):
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(timeout=10, headers=headers) as client, trio.open_nursery() as nursery:
                for n in range(16):
                    nursery.start_soon(load, client, base, n)
                await trio.sleep(0.6 + 0.1 * round_)
                process.kill()  # SIGKILL
                await process.wait()
                nursery.cancel_scope.cancel()
            process, base = await start()  # recovers the dead process before it serves
            async with open_storage(database_url, loop=aio_loop) as storage:
                charged.append(await _books_balance(storage, account.id))
    finally:
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            await process.wait()
    # Every round charged more requests than the one before (the load really ran).
    assert all(later > earlier for earlier, later in itertools.pairwise([0, *charged])), charged
