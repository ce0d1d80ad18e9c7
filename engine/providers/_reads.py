"""Bounded socket reads for stream bodies: how a frame moves as soon as its bytes are in.

An upstream connection's socket stream is wrapped (:class:`StreamReadBackend`, given to the
httpcore pool as its network backend) so that while a stream body is read
(:func:`stream_reads`) each socket read takes at most ``streaming.chunk_bytes``, and the
reads of one wakeup are handed up together. Response heads and non-streaming bodies keep
httpcore's full-size reads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import httpcore

from omixa.engine.config import StreamingConfig

# Each socket read of a streamed answer's body takes at most this many bytes unless the
# client is made with another ``read_size`` (``streaming.chunk_bytes``; the same default).
DEFAULT_READ_SIZE = StreamingConfig().chunk_bytes
# The most bytes one stream-body read hands up, gathered from back-to-back reads of at most
# ``streaming.chunk_bytes`` each (httpcore asks for 64 KiB; this is the same bound).
GATHER_BYTES = 64 * 1024


@contextlib.contextmanager
def stream_reads(extensions: Mapping[str, Any]) -> Iterator[None]:
    """Inside the block, the connection of the response with these ``extensions`` (httpcore's
    or httpx's) reads at most its client's ``read_size`` (``streaming.chunk_bytes``) per
    socket read (its body is a stream); back to full-size reads on leaving, before the
    connection can serve another request.

    Reads return whatever has arrived, up to the bound, and never wait to fill it, so a
    complete SSE frame is parsed and relayed as soon as its bytes are in. Response heads and
    non-streaming bodies are read in httpcore's usual 64 KiB reads: the knob is about how
    soon stream frames move, and 128-byte reads of a 1 KB JSON body only cost CPU.
    How the reads of one wakeup are gathered: :class:`_StreamReadStream`.
    """
    stream = extensions.get("network_stream")
    if not isinstance(stream, _StreamReadStream):
        yield  # not an HTTP/1.1 connection of ours (e.g. a test transport)
        return
    stream.read_limit = stream.stream_limit
    try:
        yield
    finally:
        stream.read_limit = None


class _StreamReadStream(httpcore.AsyncNetworkStream):
    """A connection's socket stream whose reads can be bounded while a stream body is read.

    With a bound (``read_limit``), one read does what it did before: wait (with the read
    timeout, cancellable) until bytes arrive and take at most ``read_limit`` of them. Then,
    without yielding to the scheduler, it keeps taking what the kernel already holds, in
    reads of at most ``read_limit`` bytes, until nothing more is there (or a short read says
    the buffer is drained, or ``GATHER_BYTES`` are gathered), and hands everything up in one
    piece. So every socket read stays within the bound and nothing ever waits for bytes that
    have not arrived, but httpcore, h11, httpx and the SSE parser run once per wakeup instead
    of once per ``read_limit`` bytes (at 128, a ~325-byte Azure frame took three trips).

    Plain TCP: the extra reads are non-blocking ``read(2)`` calls on the socket, which trio
    keeps non-blocking. A failure met there (a reset) is raised by the next read, after the
    bytes that came before it, as the same ``httpcore.ReadError`` trio's path would raise; an
    end of stream is simply seen again by the next read. TLS: the extra reads go through
    trio's SSL stream while OpenSSL holds decrypted bytes (``SSLObject.pending()``), so they
    never wait either; they do pass trio's checkpoint each.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream, stream_limit: int) -> None:
        self._inner = inner
        self.stream_limit = stream_limit  # the bound while a stream body is read
        self.read_limit: int | None = None
        self._failure: httpcore.ReadError | None = None
        self._ssl = inner.get_extra_info("ssl_object")
        self._socket = None
        if self._ssl is None:
            try:
                socket = inner.get_extra_info("socket")
            except Exception:  # not a socket we can read directly: no gathering
                socket = None
            if socket is not None and callable(getattr(socket, "fileno", None)):
                self._socket = socket

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        limit = self.read_limit
        if limit is None:
            return await self._inner.read(max_bytes, timeout)
        data = await self._inner.read(min(max_bytes, limit), timeout)
        cap = min(max_bytes, GATHER_BYTES)
        if self._socket is not None:
            if len(data) < limit:  # a short read: the kernel had no more (or the stream ended)
                return data
            return self._gather_socket(data, limit, cap)
        if self._ssl is not None and data and self._ssl.pending():
            return await self._gather_tls(data, limit, cap, timeout)
        return data

    def _gather_socket(self, first: bytes, limit: int, cap: int) -> bytes:
        parts = [first]
        size = len(first)
        assert self._socket is not None  # only called for a plain socket
        fd = self._socket.fileno()
        while size < cap:
            try:
                more = os.read(fd, min(limit, cap - size))
            except BlockingIOError:
                break  # nothing more has arrived
            except OSError as exc:  # raised by the next read, as trio's path would raise it
                self._failure = httpcore.ReadError(f"socket connection broken: {exc}")
                self._failure.__cause__ = exc
                break
            if not more:
                break  # end of stream: the next read sees it again
            parts.append(more)
            size += len(more)
            if len(more) < limit:
                break  # a short read: the kernel had no more
        return b"".join(parts)

    async def _gather_tls(self, first: bytes, limit: int, cap: int, timeout: float | None) -> bytes:
        parts = [first]
        size = len(first)
        while size < cap and self._ssl.pending():
            more = await self._inner.read(min(limit, cap - size), timeout)
            if not more:
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _StreamReadStream(await self._inner.start_tls(ssl_context, server_hostname, timeout), self.stream_limit)

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class StreamReadBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, handing out :class:`_StreamReadStream` connections."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, read_size: int) -> None:
        self._inner = inner
        self._read_size = read_size

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _StreamReadStream(stream, self._read_size)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _StreamReadStream(await self._inner.connect_unix_socket(path, timeout, socket_options), self._read_size)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
