"""The load generator's client: a minimal HTTP/1.1 client on raw asyncio sockets, one
keep-alive connection per ``Conn``, counting SSE ``data:`` events as the body arrives."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

from load_stats import now

_PAT_DATA = b"\n\ndata:"
_PAT_DONE = b"\n\ndata: [DONE]"
_PAT_ERROR = b'\n\ndata: {"error"'
_TAIL = 16  # longer than every pattern


# ---------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------
class Target:
    def __init__(self, url: str, auth_header: str, body: dict) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"{auth_header}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: */*\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.request = head.encode() + payload


class Result:
    """One response, as seen by the client."""

    __slots__ = (
        "t_sent", "t_first_byte", "t_first_data", "t_done", "status", "events",
        "events_in_window", "done_marker", "error_events", "failed",
    )  # fmt: skip

    def __init__(self, t_sent: float) -> None:
        self.t_sent = t_sent
        self.t_first_byte = 0.0
        self.t_first_data = 0.0
        self.t_done = 0.0
        self.status = 0
        self.events = 0  # data: events (the [DONE] marker excluded)
        self.events_in_window = 0
        self.done_marker = False
        self.error_events = 0
        self.failed = ""  # connection-level failure reason


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.lost = loop.create_future()
        self.waiter: asyncio.Future | None = None
        self.result: Result | None = None
        self.window_start = 0.0  # events are counted in the window only between these
        self.window_end = float("inf")
        self.first_data_waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.state = (
            0  # 0 head, 1 content-length body, 2 chunk size, 3 chunk data, 4 chunk CRLF, 5 trailers, 6 until close
        )
        self.remaining = 0
        self.tail = b"\n\n"
        self.keep_alive = True

    # --- asyncio callbacks ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.state == 6 and self.result is not None:
            self._complete()
        else:
            self._fail("connection closed" if exc is None else f"connection lost: {exc!r}")

    def data_received(self, data: bytes) -> None:
        r = self.result
        if r is None:
            return  # unsolicited bytes; ignored
        if not r.t_first_byte:
            r.t_first_byte = now()
        self.buf += data
        try:
            self._parse()
        except ValueError as exc:
            self._fail(f"bad response: {exc}")
            if self.transport is not None:
                self.transport.close()

    # --- requests ---
    def send(self, request: bytes) -> asyncio.Future:
        self.result = Result(now())
        self._reset()
        self.waiter = self.loop.create_future()
        assert self.transport is not None  # connect() returns the protocol after connection_made
        self.transport.write(request)
        return self.waiter

    def _fail(self, reason: str) -> None:
        r = self.result
        if r is not None and self.waiter is not None and not self.waiter.done():
            r.failed = reason
            r.t_done = now()
            self.waiter.set_result(r)
        if self.first_data_waiter is not None and not self.first_data_waiter.done():
            self.first_data_waiter.set_result(None)
        self.result = None

    def _complete(self) -> None:
        r = self.result
        assert r is not None  # called only while a request is in flight
        self.result = None
        r.t_done = now()
        r.done_marker = _PAT_DONE in self.tail
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(r)
        if self.first_data_waiter is not None and not self.first_data_waiter.done():
            self.first_data_waiter.set_result(None)
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def _body(self, data: bytes | bytearray) -> None:
        """Count SSE events in a piece of decoded body."""
        s = self.tail + data
        k = len(self.tail)
        n = s.count(_PAT_DATA, max(0, k - len(_PAT_DATA) + 1))
        if n:
            r = self.result
            assert r is not None  # body bytes are parsed only while a request is in flight
            done = s.count(_PAT_DONE, max(0, k - len(_PAT_DONE) + 1))
            errors = s.count(_PAT_ERROR, max(0, k - len(_PAT_ERROR) + 1))
            n -= done
            r.error_events += errors
            if n > 0:
                if not r.events:
                    r.t_first_data = now()
                    if self.first_data_waiter is not None and not self.first_data_waiter.done():
                        self.first_data_waiter.set_result(None)
                r.events += n
                if self.window_start <= now() < self.window_end:
                    r.events_in_window += n
        self.tail = s[-_TAIL:]

    def _parse(self) -> None:
        buf = self.buf
        while self.result is not None:
            st = self.state
            if st == 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        raise ValueError("response head too large")
                    return
                head = bytes(buf[:end]).decode("latin-1")
                del buf[: end + 4]
                lines = head.split("\r\n")
                status_line = lines[0].split(" ", 2)
                if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
                    raise ValueError(f"bad status line {lines[0]!r}")
                self.result.status = int(status_line[1])
                length = None
                chunked = False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value.strip())
                    elif name == "transfer-encoding" and "chunked" in value.lower():
                        chunked = True
                    elif name == "connection" and "close" in value.lower():
                        self.keep_alive = False
                if status_line[0] == "HTTP/1.0":
                    self.keep_alive = False
                if chunked:
                    self.state = 2
                elif length is not None:
                    self.state, self.remaining = 1, length
                    if length == 0:
                        self._complete()
                        return
                else:
                    self.state, self.keep_alive = 6, False
            elif st == 1:
                if not buf:
                    return
                take = min(len(buf), self.remaining)
                self._body(buf[:take])
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self._complete()
                    return
            elif st == 2:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ValueError("bad chunk size line")
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                del buf[: end + 2]
                if size == 0:
                    self.state = 5
                else:
                    self.state, self.remaining = 3, size
            elif st == 3:
                if not buf:
                    return
                take = min(len(buf), self.remaining)
                if take == len(buf):
                    self._body(bytes(buf))
                    buf.clear()
                else:
                    self._body(buf[:take])
                    del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = 4
            elif st == 4:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("missing CRLF after chunk")
                del buf[:2]
                self.state = 2
            elif st == 5:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:  # the blank line ending the trailers
                    self._complete()
                    return
            else:  # 6: body until close
                if buf:
                    self._body(bytes(buf))
                    buf.clear()
                return


async def connect(target: Target) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(loop), target.host, target.port)
    return conn


class Stats:
    def __init__(self) -> None:
        self.results: list[Result] = []
        self.connections = 0
        self.failures: dict[str, int] = {}

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


async def one_request(conn: Conn, target: Target, timeout: float) -> Result:
    fut = conn.send(target.request)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except TimeoutError:
        r = conn.result or Result(now())
        conn._fail("timeout")
        assert conn.transport is not None  # send() wrote the request on it
        conn.transport.close()
        r.failed = r.failed or "timeout"
        return r


async def worker_loop(
    target: Target,
    stats: Stats,
    *,
    t_end: float,
    hard_end: float,
    timeout: float,
    window: tuple[float, float] = (0.0, float("inf")),
    count: int | None = None,
) -> None:
    """Send requests back to back on one connection (reconnecting after failures) until
    ``t_end`` (no new request after it) or ``count`` requests, recording every one.
    Stream events are counted in ``events_in_window`` when they arrive inside ``window``."""
    conn: Conn | None = None
    sent = 0
    while now() < t_end and (count is None or sent < count):
        if conn is None or conn.transport is None or conn.transport.is_closing():
            try:
                conn = await asyncio.wait_for(connect(target), max(0.1, hard_end - now()))
                stats.connections += 1
            except (TimeoutError, OSError) as exc:
                stats.fail(f"connect: {type(exc).__name__}")
                await asyncio.sleep(0.05)
                continue
        conn.window_start, conn.window_end = window
        r = await one_request(conn, target, min(timeout, max(0.1, hard_end - now())))
        sent += 1
        stats.results.append(r)
        if r.failed:
            stats.fail(r.failed)
            if conn.transport is not None:
                conn.transport.close()
            conn = None
    if conn is not None and conn.transport is not None:
        conn.transport.close()
