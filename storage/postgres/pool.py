"""A lean pool of asyncpg connections, for one short call at a time (asyncio side).

Why not :class:`asyncpg.Pool`: on the trio-asyncio loop its acquire and release cost about
75 µs of CPU per call even with the reset query turned off (a shielded release task, holder
futures, timeouts), and every asyncio callback costs more there than on a plain asyncio
loop. Here, taking an idle connection is a list pop and giving it back is a list append; the
only awaits are the slot semaphore when all ``max_size`` connections are in use, and a
connect when no idle one is left.

A connection goes straight back to the idle list when the block that used it ended normally
(its statement completed, its transaction committed or rolled back) or with an error the server
reported (:class:`asyncpg.PostgresError`, after which the connection is idle again), and it is
still open and outside a transaction (a closed one is dropped). Anything else (cancellation, a
socket error, a driver error) may leave a query or a cancel request in flight: a background
task resets that connection with :meth:`asyncpg.Connection.reset` (which waits for the server
to acknowledge the cancel, then rolls back) while keeping its slot, and gives it back; one that
cannot be reset within ``RESET_TIMEOUT`` is terminated. Our statements never change session
state (no SET, LISTEN, cursors or session locks; migrations use their own connection), so the
reset query asyncpg's own pool runs after every call is not needed on the normal path.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from omixa.storage.records import PoolStats

# Bound on resetting a connection whose call was interrupted; past it, it is terminated.
RESET_TIMEOUT = 5.0


class ConnectionPool:
    """At most ``max_size`` connections to ``dsn``; ``min_size`` opened up front."""

    def __init__(self, dsn: str, *, min_size: int, max_size: int, **connect_kwargs: Any) -> None:
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError("need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1")
        self._dsn = dsn
        self._connect_kwargs = connect_kwargs
        self._min_size = min_size
        self._max_size = max_size
        self._slots = asyncio.Semaphore(max_size)
        self._waits = 0  # calls that found every connection in use
        self._idle: list[asyncpg.Connection] = []
        self._in_use: set[asyncpg.Connection] = set()
        self._resetting: dict[asyncio.Future[None], asyncpg.Connection] = {}
        self._closed = False

    async def open(self) -> ConnectionPool:
        """Open ``min_size`` connections. Errors: the driver's connect errors."""
        try:
            for _ in range(self._min_size):
                self._idle.append(await asyncpg.connect(self._dsn, **self._connect_kwargs))
        except BaseException:
            self.terminate()
            raise
        return self

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for the block; given back after it (see the module for when it is
        reset first)."""
        if self._closed:
            raise asyncpg.InterfaceError("the pool is closed")
        if self._slots.locked():
            self._waits += 1
        await self._slots.acquire()
        try:
            conn = await self._take()
        except BaseException:
            self._slots.release()
            raise
        self._in_use.add(conn)
        try:
            yield conn
        except asyncpg.PostgresError:
            self._give_back(conn)
            raise
        except BaseException:
            self._in_use.discard(conn)
            self._reset_later(conn)
            raise
        else:
            self._give_back(conn)

    def stats(self) -> PoolStats:
        """Connections now (a connection being reset counts as in use: it holds its slot)."""
        waiters = getattr(self._slots, "_waiters", None) or ()
        return PoolStats(
            max_size=self._max_size,
            in_use=len(self._in_use) + len(self._resetting),
            idle=len(self._idle),
            waiting=len(waiters),
            waits=self._waits,
        )

    def _give_back(self, conn: asyncpg.Connection) -> None:
        self._in_use.discard(conn)
        if self._closed or conn.is_closed():
            conn.terminate()
        elif conn.is_in_transaction():
            self._reset_later(conn)
            return
        else:
            self._idle.append(conn)
        self._slots.release()

    def _reset_later(self, conn: asyncpg.Connection) -> None:
        """Reset an interrupted connection in the background, holding its slot: asyncpg
        waits for the server to acknowledge a cancelled query, then rolls back and resets."""
        task = asyncio.ensure_future(self._reset(conn))
        self._resetting[task] = conn

    async def _reset(self, conn: asyncpg.Connection) -> None:
        try:
            async with asyncio.timeout(RESET_TIMEOUT):
                await conn.reset()
        except BaseException:  # a driver error, the timeout, or the pool closing
            conn.terminate()
            if not isinstance(sys.exc_info()[1], Exception):
                raise
        else:
            if self._closed:
                conn.terminate()
            else:
                self._idle.append(conn)
        finally:
            self._resetting.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._slots.release()

    async def _take(self) -> asyncpg.Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
        return await asyncpg.connect(self._dsn, **self._connect_kwargs)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args)

    async def execute(self, query: str, *args: Any) -> None:
        async with self.acquire() as conn:
            await conn.execute(query, *args)

    async def close(self, timeout: float) -> None:
        """Refuse new calls and close every connection gracefully, waiting up to ``timeout``
        seconds for calls in use and resets; then terminate whatever is left."""
        self._closed = True
        try:
            async with asyncio.timeout(timeout):
                # Polled: a close is rare and bounded by ``timeout``, so no event is kept for it.
                while self._in_use or self._resetting:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                await asyncio.gather(*(conn.close() for conn in self._idle), return_exceptions=True)
        except TimeoutError:
            pass
        finally:
            self.terminate()

    def terminate(self) -> None:
        """Close every connection at once, without waiting for the server."""
        self._closed = True
        for task in self._resetting:
            task.cancel()
        for conn in [*self._idle, *self._in_use, *self._resetting.values()]:
            if not conn.is_closed():
                conn.terminate()
        self._idle.clear()
