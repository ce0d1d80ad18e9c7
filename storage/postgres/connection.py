"""Connecting to PostgreSQL: the pool's options from the URL, opening and closing the pool,
migrating, and the one-statement calls. Everything here but :func:`pool_options` runs on the
asyncio loop (through :class:`~.aio.AioBridge`).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from omixa.storage.migrations import load_migrations, pending_migrations
from omixa.storage.postgres.pool import ConnectionPool
from omixa.storage.postgres.sql import SQL

# What the driver and the socket raise; the facade turns each into a StorageError.
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# pg_advisory_lock key serializing migrations across processes ("omixa" in ASCII).
MIGRATION_LOCK_KEY = 0x6F6D697861
CLOSE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0


def pool_options(url: str) -> tuple[str, dict[str, int]]:
    """Take ``pool_min_size``/``pool_max_size`` out of the URL's query (asyncpg would
    pass unknown parameters to the server as settings)."""
    parts = urlsplit(url)
    options = {"min_size": 1, "max_size": 10}
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ("pool_min_size", "pool_max_size"):
            options[key.removeprefix("pool_")] = int(value)
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), options


async def create_pool(dsn: str, options: dict[str, int]) -> ConnectionPool:
    pool = ConnectionPool(dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": "omixa"}, **options)
    return await pool.open()


async def close_pool(pool: ConnectionPool) -> None:
    await pool.close(CLOSE_TIMEOUT)


async def migrate(dsn: str) -> None:
    migrations = load_migrations("postgres")
    # Its own connection, not a pooled one: the session advisory lock (held across one
    # transaction per version) then dies with the session whatever happens.
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(SQL.CREATE_SCHEMA_MIGRATIONS)
        applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in pending_migrations(migrations, applied):
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
    finally:
        try:
            await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
        except (TimeoutError, *DRIVER_ERRORS):
            conn.terminate()


# One statement on a pooled connection: what most of the facade's calls are.


async def fetchval(pool: ConnectionPool, query: str, *args: Any) -> Any:
    return await pool.fetchval(query, *args)


async def fetchrow(pool: ConnectionPool, query: str, *args: Any) -> asyncpg.Record | None:
    return await pool.fetchrow(query, *args)


async def fetch(pool: ConnectionPool, query: str, *args: Any) -> list[asyncpg.Record]:
    return await pool.fetch(query, *args)


async def execute(pool: ConnectionPool, query: str, *args: Any) -> None:
    await pool.execute(query, *args)
