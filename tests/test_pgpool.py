"""The PostgreSQL connection pool (storage/postgres/pool.py) on a real server: reuse, its bound,
interrupted calls, close. Connections are counted on the server (pg_stat_activity)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import asyncpg
import pytest
import trio
from conftest import PG_URL

from omixa.storage.aio import AioBridge
from omixa.storage.postgres.pool import ConnectionPool

APP = "omixa-pool-test"


@pytest.fixture
async def bridge(aio_loop):
    try:
        await AioBridge(aio_loop).run(_probe)
    except OSError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    return AioBridge(aio_loop)


async def _probe() -> None:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    await conn.close()


async def _open(min_size: int, max_size: int) -> ConnectionPool:
    pool = ConnectionPool(PG_URL, min_size=min_size, max_size=max_size, server_settings={"application_name": APP})
    return await pool.open()


@asynccontextmanager
async def opened(bridge, min_size: int, max_size: int):
    """A pool for the block, closed after it however the block ends."""
    pool = await bridge.run(_open, min_size, max_size)
    try:
        yield pool
    finally:
        await bridge.run(pool.close, 5)


async def _server_connections() -> int:
    conn = await asyncpg.connect(PG_URL)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", APP)
    finally:
        await conn.close()


async def _backend_pid(pool: ConnectionPool) -> int:
    return await pool.fetchval("SELECT pg_backend_pid()")


async def test_one_connection_serves_calls_one_after_another(bridge):
    async with opened(bridge, 1, 4) as pool:
        pids = {await bridge.run(_backend_pid, pool) for _ in range(20)}
        assert len(pids) == 1
        assert await bridge.run(_server_connections) == 1
    assert await bridge.run(_server_connections) == 0


async def test_concurrent_calls_stay_within_max_size(bridge):
    peak = 0

    async def slow_call(pool):
        await pool.fetchval("SELECT pg_sleep(0.05)")

    async def watch():
        nonlocal peak
        for _ in range(10):
            peak = max(peak, await _server_connections())
            await asyncio.sleep(0.02)

    async def all_calls(pool):
        await asyncio.gather(*(slow_call(pool) for _ in range(12)), watch())

    async with opened(bridge, 0, 3) as pool:
        await bridge.run(all_calls, pool)
        assert peak == 3


async def test_an_interrupted_call_is_reset_and_its_connection_reused(bridge):
    """A call cancelled mid-query (inside a transaction) leaves neither a lock, an open
    transaction nor an extra connection behind."""

    async def in_transaction(pool):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_sleep(5)")

    async def state(pool):
        async with pool.acquire() as conn:
            return conn.is_in_transaction(), await conn.fetchval("SELECT pg_backend_pid()")

    async with opened(bridge, 1, 1) as pool:
        before = await bridge.run(_backend_pid, pool)
        with trio.move_on_after(0.2) as scope:
            await bridge.run(in_transaction, pool)
        assert scope.cancelled_caught
        with trio.fail_after(5):  # waits for the reset to give the only slot back
            in_tx, pid = await bridge.run(state, pool)
        assert (in_tx, pid) == (False, before)
        assert await bridge.run(_server_connections) == 1
    assert await bridge.run(_server_connections) == 0


async def test_a_server_error_keeps_the_connection(bridge):
    async with opened(bridge, 1, 1) as pool:
        before = await bridge.run(_backend_pid, pool)
        with pytest.raises(asyncpg.PostgresError):
            await bridge.run(pool.execute, "SELECT 1/0")
        assert await bridge.run(_backend_pid, pool) == before


async def test_close_terminates_calls_still_running_after_its_timeout(bridge):
    pool = await bridge.run(_open, 1, 2)
    outcome = []

    async def long_call():
        try:
            await pool.fetchval("SELECT pg_sleep(30)")
        except Exception as exc:  # the terminated connection
            outcome.append(exc)

    async def close_while_running():
        task = asyncio.ensure_future(long_call())
        await asyncio.sleep(0.2)
        await pool.close(0.3)
        await asyncio.wait_for(task, 2)

    try:
        with trio.fail_after(3):
            await bridge.run(close_while_running)
        assert [type(e) for e in outcome] == [asyncpg.ConnectionDoesNotExistError]
        with pytest.raises(asyncpg.InterfaceError):
            await bridge.run(pool.fetchval, "SELECT 1")
    finally:  # the server runs the sleep on until it next talks to the client
        await bridge.run(_terminate_test_backends)


async def _terminate_test_backends() -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", APP)
    finally:
        await conn.close()
