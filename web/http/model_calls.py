"""``POST /api/v1/embeddings`` and ``POST /api/v1/images/generations``.

Both take the chat path (:mod:`engine.intake`, :mod:`engine.exchange`): key auth, the key's
limits, the body checked (large ones off the loop), a hold, routing
with failover, settle, a request log, the error envelope. Only the checks and the pricing
differ (:mod:`engine.embeddings`, :mod:`engine.images`). The answer is the upstream's JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio

from omixa.engine.embeddings import parse_embedding_request
from omixa.engine.exchange import Caller
from omixa.engine.images import parse_image_request
from omixa.engine.runtime import Engine
from omixa.web.http.envelope import json_response


def register(
    app: QuartTrio,
    engine: Engine,
    *,
    authenticate: Callable[[], Awaitable[Any]],
    read_body: Callable[[], Awaitable[bytes]],
    request_id: Callable[[], str],
) -> None:
    """Add the embeddings and image routes to ``app``.

    Args:
        authenticate: the app's key check (returns the key record).
        read_body: reads the raw body within the size limit.
        request_id: the current request's id.
    """

    async def call(parse: Callable[..., Any]) -> Response:
        key = await authenticate()
        parsed = await engine.intake.take(
            key,
            request.content_length,
            read_body,
            partial(parse, catalog=engine.catalog, enabled=engine.router.models()),
        )
        g.model = parsed.model.id  # for the rate-limit headers
        caller = Caller(request_id=request_id(), key=key)
        return json_response(await engine.chat.complete(caller, parsed))

    @app.post("/api/v1/embeddings")
    async def embeddings() -> Response:
        return await call(parse_embedding_request)

    @app.post("/api/v1/images/generations")
    async def image_generations() -> Response:
        return await call(parse_image_request)
