"""ASGI middleware giving each HTTP request a nursery of its own and a guaranteed cleanup.

The wrapper runs around the whole request, from the first byte received to the last sent:
- ``scope["omixa.nursery"]`` is a nursery that lives exactly as long as the request; a
  streamed response runs its upstream reader there, so no task outlives its request;
- ``scope["omixa.closers"]`` collects owners of streamed bodies (anything with ``aclose()``).
  Quart closes a body it has started to iterate, but a client that leaves between the view's
  return and the first byte (while the response head is being sent) would skip that; this
  wrapper closes whatever is left, in a shielded, bounded step, before the nursery closes.
  Closing twice is harmless: owners are idempotent.
- with tracing on (:mod:`engine.tracing`), ``scope["omixa.trace"]`` is the request's
  :class:`~engine.tracing.RequestTrace` (absent for the health probes and requests the
  sampler drops): its span starts here, from the request's ``traceparent``, takes the
  response's status, and ends after the closing step, so a stream's span ends after its
  settle whatever ended it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import trio
from quart import request

from omixa.engine.relay import StreamRelay

if TYPE_CHECKING:
    from omixa.engine.tracing import RequestTrace, Tracing

log = logging.getLogger("omixa.web")

CLOSERS_KEY = "omixa.closers"
NURSERY_KEY = "omixa.nursery"
TRACE_KEY = "omixa.trace"
CLOSE_TIMEOUT = 15.0
# Not traced: the probes a load balancer or Kubernetes sends every few seconds.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz"})


def bind_to_request(relay: StreamRelay) -> StreamRelay:
    """Tie a streamed body to the current request: its upstream is read in the request's
    nursery, and it is closed (settled) when the request ends, however it ends."""
    scope = cast(dict[str, Any], request.scope)  # ASGI's scope, with this wrapper's keys
    scope[CLOSERS_KEY].append(relay)
    relay.start(scope[NURSERY_KEY])
    return relay


def request_trace() -> RequestTrace | None:
    """The current request's trace, if it is traced (call it only with tracing on)."""
    return cast(dict[str, Any], request.scope).get(TRACE_KEY)


class RequestScope:
    def __init__(self, app: Callable[..., Awaitable[None]], tracing: Tracing | None = None) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        closers: list[Any] = []
        scope[CLOSERS_KEY] = closers
        trace = None
        if self.tracing is not None and scope["path"] not in UNTRACED_PATHS:
            trace = _start_trace(self.tracing, scope)
            if trace is not None:
                scope[TRACE_KEY] = trace
                send = _reporting_status(trace, send)
        async with trio.open_nursery() as nursery:
            scope[NURSERY_KEY] = nursery
            try:
                await self.app(scope, receive, send)
            finally:
                if closers:
                    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                        for closer in closers:
                            try:
                                await closer.aclose()
                            except Exception:
                                log.exception("closing a streamed response failed")
                if trace is not None:
                    trace.end()


def _start_trace(tracing: Tracing, scope: dict[str, Any]) -> RequestTrace | None:
    """The request's span, with OpenTelemetry's HTTP server attributes of ``scope``."""
    method = scope["method"]
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if scope.get("server"):
        attributes["server.address"], attributes["server.port"] = scope["server"][0], scope["server"][1]
    if scope.get("client"):
        attributes["client.address"] = scope["client"][0]
    for name, value in scope["headers"]:
        if name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    return tracing.request(method, scope["headers"], attributes)


def _reporting_status(trace: RequestTrace, send: Any) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """``send``, telling ``trace`` the response's status as its head goes out."""

    async def send_reporting(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            trace.responded(message["status"])
        await send(message)

    return send_reporting
