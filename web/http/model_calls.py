"""The paid model calls: ``POST /api/v1/chat/completions`` and ``POST /api/v1/responses`` (JSON
or an SSE stream), ``POST /api/v1/embeddings`` and ``POST /api/v1/images/generations``.

All take one path (:mod:`engine.intake`, :mod:`engine.exchange`): the key's limits, the body
checked (large ones off the loop), a hold, routing with failover, settle, a request log, the
error envelope. Only the checks and the pricing differ (:mod:`engine.chat_request`,
:mod:`engine.responses_request`, :mod:`engine.embeddings`, :mod:`engine.images`). A
non-streaming answer is the upstream's JSON; a stream is the engine's relay, tied to the
request (:func:`web.http.lifecycle.bind_to_request`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import urlencode

from quart import Response, g, request
from quart_trio import QuartTrio

from omixa.engine.chat_request import ChatRequest
from omixa.engine.embeddings import parse_embedding_request
from omixa.engine.errors import InvalidRequest
from omixa.engine.exchange_context import Caller
from omixa.engine.images import parse_image_request
from omixa.engine.model_call import ModelCall
from omixa.engine.relay import StreamRelay
from omixa.engine.responses_request import ResponsesRequest
from omixa.engine.runtime import Engine
from omixa.storage import ApiKeyRecord
from omixa.web.http.envelope import current_request_id, json_response
from omixa.web.http.gate import SSE_HEADERS
from omixa.web.http.lifecycle import bind_to_request, request_trace


def register(
    app: QuartTrio,
    engine: Engine,
    *,
    authenticate: Callable[[], Awaitable[ApiKeyRecord]],
    read_body: Callable[[], Awaitable[bytes]],
) -> Callable[[ApiKeyRecord], Awaitable[Response]]:
    """Add the model-call routes to ``app``. Returns ``serve_chat``, which answers the
    current request's chat completion for a key (the dashboard's playground uses it too:
    same engine, limits, billing and wallet).

    Args:
        authenticate: the app's key check (returns the key record).
        read_body: reads the raw body within the size limit.

    With tracing on, each paid call's exchange reports its steps to the request's trace
    (``Caller.trace``).
    """
    traced = engine.tracing is not None

    async def take(key: ApiKeyRecord, parse: Callable[[Any], ModelCall]) -> ModelCall:
        g.key = key
        parsed = await engine.intake.take(key, request.content_length, read_body, parse)
        g.model = parsed.model.id  # for the rate-limit headers
        return parsed

    async def serve_chat(key: ApiKeyRecord) -> Response:
        chat = engine.chat
        parsed = await take(key, chat.parser())
        assert isinstance(parsed, ChatRequest)
        caller = Caller(request_id=current_request_id(), key=key, trace=request_trace() if traced else None)
        if not parsed.stream:
            return json_response(await chat.complete(caller, parsed))
        return stream_response(await chat.open_stream(caller, parsed))

    async def call(parse: Callable[..., ModelCall]) -> Response:
        key = await authenticate()
        parsed = await take(key, partial(parse, catalog=engine.catalog, enabled=engine.router.models()))
        caller = Caller(request_id=current_request_id(), key=key, trace=request_trace() if traced else None)
        return json_response(await engine.chat.complete(caller, parsed))

    @app.post("/api/v1/chat/completions")
    async def chat_completions() -> Response:
        return await serve_chat(await authenticate())

    @app.post("/api/v1/responses")
    async def responses() -> Response:
        key = await authenticate()
        chat = engine.chat
        parsed = await take(key, chat.responses_parser())
        assert isinstance(parsed, ResponsesRequest)
        caller = Caller(request_id=current_request_id(), key=key, trace=request_trace() if traced else None)
        if not parsed.stream:
            return json_response(await chat.respond(caller, parsed))
        return stream_response(await chat.open_response_stream(caller, parsed))

    async def manage(response_id: str, method: str, rest: str = "", check: Callable[[], str] | None = None) -> Response:
        """A stored response's lookup for the authenticated key; ``check`` validates the
        query (after authentication) and returns what to pass upstream."""
        key = await authenticate()
        g.key = key
        if check is not None:
            rest += check()
        await engine.intake.count(key)
        caller = Caller(request_id=current_request_id(), key=key)
        return json_response(await engine.chat.manage_response(caller, response_id, method, rest))

    @app.get("/api/v1/responses/<response_id>")
    async def get_response(response_id: str) -> Response:
        return await manage(response_id, "GET", check=_retrieve_query)

    @app.delete("/api/v1/responses/<response_id>")
    async def delete_response(response_id: str) -> Response:
        return await manage(response_id, "DELETE")

    @app.post("/api/v1/responses/<response_id>/cancel")
    async def cancel_response(response_id: str) -> Response:
        return await manage(response_id, "POST", "/cancel")

    @app.get("/api/v1/responses/<response_id>/input_items")
    async def response_input_items(response_id: str) -> Response:
        return await manage(response_id, "GET", "/input_items", check=_input_items_query)

    @app.post("/api/v1/embeddings")
    async def embeddings() -> Response:
        return await call(parse_embedding_request)

    @app.post("/api/v1/images/generations")
    async def image_generations() -> Response:
        return await call(parse_image_request)

    return serve_chat


# The query parameters a stored response's lookups pass on to Azure.
INCLUDE = ("include", "include[]")


def _query(names: tuple[str, ...]) -> str:
    """The request's own values of ``names``, as a query string for the upstream ("" if none)."""
    pairs = [(name, value) for name in names for value in request.args.getlist(name)]
    return "?" + urlencode(pairs) if pairs else ""


def _retrieve_query() -> str:
    if request.args.get("stream") not in (None, "false"):
        raise InvalidRequest("Only background responses can be streamed again; they are not supported.", param="stream")
    return _query(INCLUDE)


def _input_items_query() -> str:
    limit = request.args.get("limit")
    if limit is not None and not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= 100):
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    if request.args.get("order") not in (None, "asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc.", param="order")
    return _query((*INCLUDE, "limit", "order", "after", "before"))


def stream_response(relay: StreamRelay) -> Response:
    """The SSE response of a stream's relay, bound to the request (closed whatever happens)."""
    response = Response(bind_to_request(relay), status=200, headers=SSE_HEADERS, content_type="text/event-stream")
    response.timeout = None  # never cut a long stream
    return response
