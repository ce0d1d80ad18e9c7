"""Shared fixtures: a fresh database on each real backend.

``database_url`` is parametrised over SQLite (a file under tmp_path) and PostgreSQL (a new
database created for the test on the server named by ``OMIXA_TEST_DATABASE_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``, dropped afterwards). When no PostgreSQL answers,
the PostgreSQL cases are skipped with a reason; ``.ci/run`` fails the build if any were.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import openai
import pytest
import trio_asyncio
from cryptography.fernet import Fernet

from omixa.storage import open_storage

PG_URL = os.environ.get("OMIXA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _postgres_database() -> Iterator[str]:
    name = "omixa_t_" + secrets.token_hex(6)
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    try:
        yield _with_database(PG_URL, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A URL of an empty database on one backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'omixa.db'}"
        return
    yield from _postgres_database()


@pytest.fixture
def postgres_url():
    """A URL of an empty PostgreSQL database (what several hosts share)."""
    yield from _postgres_database()


@pytest.fixture
async def aio_loop():
    """A trio-asyncio loop for the PostgreSQL backend (and anything else asyncio)."""
    async with trio_asyncio.open_loop() as loop:
        yield loop


@pytest.fixture
async def storage(database_url, aio_loop):
    """An open, migrated Storage on one backend."""
    async with open_storage(database_url, loop=aio_loop) as store:
        yield store


@pytest.fixture
def secret_key(monkeypatch):
    """A fresh OMIXA_SECRET_KEY (the server key signing secrets are encrypted under)."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("OMIXA_SECRET_KEY", key)
    return key


@pytest.fixture
def redis_server():
    """A redis-server of the test's own (tests/redis_helpers.py), stopped afterwards."""
    from redis_helpers import RedisServer

    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sdk():
    """``sdk(gw, key)``: an official openai SDK client of ``gw`` for ``key`` (no retries),
    closed when the test ends (one left to the garbage collector may report its socket
    unclosed in whatever test runs then)."""
    with contextlib.ExitStack() as clients:

        def open_client(gw, key: str) -> openai.OpenAI:
            client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)
            return clients.enter_context(client)

        yield open_client
