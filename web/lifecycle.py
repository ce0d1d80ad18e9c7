"""ASGI middleware that guarantees every streamed response's upstream is closed and settled.

A view that returns a streaming body registers the body's owner (anything with ``aclose()``)
in ``scope["omixa.closers"]``. Quart closes a body it has started to iterate, but a client
that leaves between the view's return and the first byte (while the response head is being
sent) would skip that; this wrapper runs around the whole request and closes whatever is
left, in a shielded, bounded step. Closing twice is harmless: owners are idempotent.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio

log = logging.getLogger("omixa.web")

CLOSERS_KEY = "omixa.closers"
CLOSE_TIMEOUT = 15.0


class CloseLeftovers:
    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        closers: list[Any] = []
        scope[CLOSERS_KEY] = closers
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
