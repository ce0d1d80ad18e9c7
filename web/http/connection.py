"""ASGI middleware that keeps HTTP/1.1 connections sound when the app answers early.

Two faults of Quart-Trio 0.12 on Hypercorn 0.18, both fixed here, between the server and the
app, so neither package is patched:

1. **The end of a response cancels itself.** Hypercorn finishes an HTTP/1.1 exchange inside
   the app's last ``send`` (the one with ``more_body`` false): it tells the app the stream is
   over (an ``http.disconnect`` message), then either readies the connection for the next
   request (restarting its idle timer) or closes the socket. Quart-Trio's receiving task
   takes that ``http.disconnect`` for the client leaving and cancels the request's tasks,
   which cancels Hypercorn half-way through that last ``send``. The socket of a
   ``Connection: close`` exchange is then never closed and its idle timer never restarts
   (the client holds a file descriptor until it leaves); a keep-alive connection is left
   between two requests, and the next request on it is never answered.
2. **A body the app never read.** When the app answers before the request body has arrived
   (401 for a bad key, 404, 405, 413), HTTP/1.1 can only carry the next request once the
   whole body has been read; Hypercorn closes the connection instead, and with fault 1 it
   stalls.

So the guard:
- swallows, once the app's last ``send`` has begun, every message the app would receive: the
  ``http.disconnect`` that the response's own end produces is not the client leaving;
- runs that last ``send`` shielded, with a time bound, so Hypercorn always finishes it;
- before that last ``send`` on HTTP/1.x, reads and discards what is left of the request body,
  up to ``drain_bytes`` and ``drain_seconds``, so the connection can carry the next request.
  When the declared ``Content-Length`` left is larger than ``drain_bytes``, the response
  says ``Connection: close`` instead, and the connection closes after it. A chunked body
  that outgrows the bound, or a client that stops sending, also ends with the connection
  closed (after the whole response was sent).

A client that leaves before the response ends is still seen: the ``http.disconnect`` that
arrives before the app's last ``send`` reaches the app as before, and cancels the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Bound on the shielded last send (Hypercorn writes the end of the response and recycles or
# closes the connection; the socket writes themselves are already shielded by Hypercorn).
FINISH_TIMEOUT = 10.0
_HTTP1 = frozenset({"1.0", "1.1"})


class ConnectionGuard:
    """Wrap an ASGI ``app`` (see the module docstring).

    Args:
        app: the ASGI application.
        drain_bytes: the most request body bytes read and discarded after an early answer.
        drain_seconds: the most time spent reading them.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], *, drain_bytes: int, drain_seconds: float) -> None:
        self.app = app
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        await self.app(scope, exchange.receive, exchange.send)


class _Exchange:
    """One request's messages between Hypercorn and the app."""

    __slots__ = (
        "_guard", "_receive", "_send", "_http1", "_length", "_received", "_body_done",
        "_closing", "_finishing", "_drain_scope",
    )  # fmt: skip

    def __init__(self, guard: ConnectionGuard, scope: Scope, receive: Receive, send: Send) -> None:
        self._guard = guard
        self._receive = receive
        self._send = send
        self._http1 = scope.get("http_version") in _HTTP1
        self._length: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    self._length = int(value)
                except ValueError:
                    pass
            elif name == b"transfer-encoding":
                chunked = True
        self._received = 0
        # An HTTP/1.x request with neither header has no body (RFC 9112, 6.3).
        self._body_done = self._http1 and self._length is None and not chunked
        self._closing = False  # the response says Connection: close; nothing to drain
        self._finishing = False  # the app's last send has begun
        self._drain_scope: trio.CancelScope | None = None

    def _note(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._end_of_body()
        elif kind == "http.disconnect":
            self._end_of_body()  # nothing more will come

    def _end_of_body(self) -> None:
        self._body_done = True
        if self._drain_scope is not None:
            self._drain_scope.cancel()

    async def receive(self) -> Message:
        """The app's ``receive``: Hypercorn's, until the app's last send has begun; then
        nothing more (the app's receiving task waits until the app cancels it)."""
        while True:
            if self._finishing and self._body_done:
                await trio.sleep_forever()
            message = await self._receive()
            self._note(message)
            if not self._finishing:
                return message
            # After the response: body left over is discarded, a disconnect is not the client's.

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._should_close():
                self._closing = True
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await self._send(message)
            return
        if kind != "http.response.body" or message.get("more_body", False):
            await self._send(message)
            return
        self._finishing = True
        try:
            if self._http1 and not self._body_done and not self._closing:
                await self._drain()
        finally:
            with trio.move_on_after(FINISH_TIMEOUT, shield=True):
                await self._send(message)

    def _should_close(self) -> bool:
        """Whether the body left unread is too large to drain after the response."""
        if not self._http1 or self._body_done or self._length is None:
            return False
        return self._length - self._received > self._guard.drain_bytes

    async def _drain(self) -> None:
        """Read and discard the rest of the body, within the guard's bounds. The app's own
        receiving task may take some of it meanwhile; whichever sees its end stops this."""
        guard = self._guard
        with trio.move_on_after(guard.drain_seconds) as scope:
            self._drain_scope = scope
            try:
                while not self._body_done and self._received <= guard.drain_bytes:
                    self._note(await self._receive())
            finally:
                self._drain_scope = None
