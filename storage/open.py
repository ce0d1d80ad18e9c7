"""Choosing and opening a backend by URL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from omixa.storage.base import Storage

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///PATH`` URL (``PATH`` as written: relative to the
    working directory unless it starts with ``/``; ``:memory:`` for an in-memory database).

    Errors: ValueError if ``url`` is not such a URL or names no path.
    """
    if not url.startswith(_SQLITE_PREFIX):
        raise ValueError(f"not a SQLite URL (expected sqlite:///PATH): {url!r}")
    path = url[len(_SQLITE_PREFIX) :]
    if not path:
        raise ValueError(f"SQLite URL names no file: {url!r}")
    return path


@contextlib.asynccontextmanager
async def open_storage(url: str, *, loop: asyncio.AbstractEventLoop | None = None) -> AsyncIterator[Storage]:
    """Open the database named by ``url``, apply pending migrations, yield it, close it.

    Args:
        url: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
            ``sqlite:///:memory:``, or ``postgresql://user@host:port/db`` (also
            ``postgres://``; ``?pool_min_size=N&pool_max_size=M`` size the pool, default 1
            and 10).
        loop: the trio-asyncio loop for PostgreSQL; default the current task's
            (``trio_asyncio.current_loop``). Ignored for SQLite.

    Errors: ValueError for an unsupported URL; StorageError if the database cannot be
    opened (or PostgreSQL has no trio-asyncio loop); MigrationError.
    """
    # Backends are imported on demand: trio_asyncio (used by the PostgreSQL one) patches
    # asyncio's event-loop policy functions at import time, which SQLite users need not get.
    if url.startswith("sqlite:"):
        from omixa.storage.sqlite import SQLiteStorage

        store: Storage = await SQLiteStorage.open(sqlite_path(url))
    elif url.startswith(_POSTGRES_SCHEMES):
        from omixa.storage.postgres import PostgresStorage

        store = await PostgresStorage.open(url, loop=loop)
    else:
        scheme = url.split(":", 1)[0] if ":" in url else url
        raise ValueError(
            f"unsupported storage URL scheme {scheme!r}: use sqlite:///PATH or postgresql://user@host:port/db"
        )
    try:
        yield store
    finally:
        await store.aclose()
