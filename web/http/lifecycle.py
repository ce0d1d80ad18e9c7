"""ASGI middleware giving each HTTP request a nursery of its own and a guaranteed cleanup.

The wrapper runs around the whole request, from the first byte received to the last sent:
- ``scope["omixa.nursery"]`` is a nursery that lives exactly as long as the request; a
  streamed response runs its upstream reader there, so no task outlives its request;
- ``scope["omixa.closers"]`` collects owners of streamed bodies (anything with ``aclose()``).
  Quart closes a body it has started to iterate, but a client that leaves between the view's
  return and the first byte (while the response head is being sent) would skip that; this
  wrapper closes whatever is left, in a shielded, bounded step, before the nursery closes.
  Closing twice is harmless: owners are idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from quart import request

from omixa.engine.relay import StreamRelay

log = logging.getLogger("omixa.web")

CLOSERS_KEY = "omixa.closers"
NURSERY_KEY = "omixa.nursery"
CLOSE_TIMEOUT = 15.0


def bind_to_request(relay: StreamRelay) -> StreamRelay:
    """Tie a streamed body to the current request: its upstream is read in the request's
    nursery, and it is closed (settled) when the request ends, however it ends."""
    scope = cast(dict[str, Any], request.scope)  # ASGI's scope, with this wrapper's keys
    scope[CLOSERS_KEY].append(relay)
    relay.start(scope[NURSERY_KEY])
    return relay


class RequestScope:
    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        closers: list[Any] = []
        scope[CLOSERS_KEY] = closers
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
