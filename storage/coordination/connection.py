"""Connections to Redis on trio's own sockets.

Commands are packed by redis-py's RESP serializer and replies parsed by hiredis (the Redis
project's C parser); the URL is read by redis-py's parser. What is ours is only the socket
and a small pool. Why not redis-py's clients: measured in one process on the bench machine,
one batch call took 855 us wall and 735 us of CPU through redis-py's asyncio client on the
trio-asyncio bridge (about ten event-loop turns per call), 542 us and 318 us through its
synchronous client in a trio worker thread (and under load its threads wait for the GIL), and
123 us and 90 us here, of which the script itself runs in Redis.

A connection serves one call at a time (send, then read its one reply). One that fails, or
whose call is cancelled midway, is closed, never reused: its reply may still be on the way.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import hiredis
import redis.connection
import trio

# Larger arguments are sent as their own buffer rather than copied (redis-py's default).
_BUFFER_CUTOFF = 6000


class RedisReplyError(Exception):
    """Redis answered with an error (``-ERR ...``, ``-NOSCRIPT ...``)."""


class RedisConnection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._reader = hiredis.Reader()
        self._encoder = redis.connection.Encoder("utf-8", "strict", False)
        self._serializer = redis.connection.PythonRespSerializer(_BUFFER_CUTOFF, self._encoder.encode)

    async def call(self, *args: Any) -> Any:
        """Send one command, return its reply (bulk strings as bytes).

        Errors: RedisReplyError (an error reply: the connection stays usable), OSError or
        trio's stream errors (the connection is broken).
        """
        await self._stream.send_all(b"".join(self._serializer.pack(*args)))
        while True:
            reply = self._reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisReplyError(str(reply))
                return reply
            data = await self._stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("Redis closed the connection")
            self._reader.feed(bytes(data))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


class RedisPool:
    """Idle connections to one Redis server, opened on demand (``redis://``, ``rediss://``)."""

    def __init__(self, url: str) -> None:
        options = redis.connection.parse_url(url)  # ValueError for what redis-py cannot use
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._db = int(options.get("db", 0))
        self._username = options.get("username")
        self._password = options.get("password")
        self._tls = options.get("connection_class") is redis.connection.SSLConnection
        self._idle: list[RedisConnection] = []
        self._closed = False

    async def _open(self) -> RedisConnection:
        if self._tls:
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                self._host, self._port, ssl_context=ssl.create_default_context()
            )
        else:
            stream = await trio.open_tcp_stream(self._host, self._port)
        conn = RedisConnection(stream)
        try:
            if self._password is not None:
                auth = (self._username, self._password) if self._username else (self._password,)
                await conn.call("AUTH", *auth)
            if self._db:
                await conn.call("SELECT", self._db)
        except BaseException:
            await conn.aclose()
            raise
        return conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[RedisConnection]:
        """A connection for one call; back to the idle list unless the block failed."""
        if self._closed:
            raise trio.ClosedResourceError("the Redis pool is closed")
        conn = self._idle.pop() if self._idle else await self._open()
        try:
            yield conn
        except RedisReplyError:
            self._idle.append(conn)  # Redis answered: the connection is in step
            raise
        except BaseException:
            with trio.CancelScope(shield=True):
                await conn.aclose()
            raise
        self._idle.append(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()
