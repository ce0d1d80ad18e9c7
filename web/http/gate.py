"""What every request passes through on its way in and out, in one place.

On the way in (``before_request``, in this order, before any view):

1. a request id (``req_...``) is assigned, and a URL with a NUL character (percent-encoded:
   ``%00``) is refused: no id, filter or name holds one, and PostgreSQL refuses it in text;
2. on every ``/api/v1`` route that matched (except :data:`PUBLIC_PATHS`), the caller is
   authenticated by the engine's one call (:meth:`engine.access.Access.authenticate`: the
   key, and the signature where one is required or sent). This module supplies the
   request's head and reads the body only when the engine asks for it (within
   ``server.max_body_bytes``); the body is cached on the request (``get_data(cache=True)``),
   so the view parses these same bytes. An unsigned paid model call (:data:`PAID_PATHS`)
   may be served from this process's recent record of its key: its hold re-checks in the
   database that the key is live. The key is then put on ``g.key`` for the views. A path
   that matches no route, or a method the route does not allow, is left to the router
   (404/405) without authentication. Nothing is held or sent upstream before this passed.

With tracing on, the request's span (:mod:`web.http.lifecycle`) gets its route and request
id, and, once authenticated, its account and key ids.

On the way out (``after_request``): ``x-request-id``; the request counted in the metrics (by
route template, method, status and error code); on the chat routes, the headers that
keep proxies from buffering a stream (sent on every response of those routes, streamed or
not, error or not); for a known key, OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from omixa.engine.access import RequestHead
from omixa.engine.errors import InvalidRequest, RequestTooLarge
from omixa.engine.keylimits import fleet_views, format_reset
from omixa.engine.runtime import Engine
from omixa.web.http.envelope import REQUEST_ID_HEADER, current_request_id, new_request_id
from omixa.web.http.lifecycle import request_trace
from omixa_client import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

API_PREFIX = "/api/v1"
# Served to anyone: the API's description holds nothing of any account.
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json"})
# Model calls: each holds money first, and the hold checks that the key is still live.
PAID_PATHS = frozenset({"/api/v1/chat/completions", "/api/v1/embeddings", "/api/v1/images/generations"})
# The routes that stream chat completions (the API's and the dashboard playground's).
CHAT_PATHS = frozenset({"/api/v1/chat/completions", "/playground/chat/completions"})
# Methods counted by name in the metrics (any other is "other": labels stay bounded).
METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})
SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Alt-Svc": "clear",
}


def register(app: QuartTrio, engine: Engine) -> None:
    max_body = engine.config.server.max_body_bytes
    tracing = engine.tracing

    @app.before_request
    async def begin_request() -> None:
        g.request_id = new_request_id()
        if tracing is not None and (trace := request_trace()) is not None:
            rule = request.url_rule
            trace.routed(rule.rule if rule is not None else None, g.request_id)
        # (A raw NUL cannot reach here: the HTTP parser refuses it. Encoded, it is %00.)
        if "\x00" in request.path or b"%00" in request.query_string:
            raise InvalidRequest("The request URL must not contain NUL characters.")

    @app.before_request
    async def authenticate_api_request() -> None:
        path = request.path
        if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            return
        if request.routing_exception is not None or path in PUBLIC_PATHS:
            return
        headers = request.headers
        head = RequestHead(
            authorization=headers.get("Authorization"),
            timestamp=headers.get(TIMESTAMP_HEADER),
            nonce=headers.get(NONCE_HEADER),
            signature=headers.get(SIGNATURE_HEADER),
            method=request.method,
            target=request_target(request.scope),
            paid=path in PAID_PATHS,
        )
        g.key = key = await engine.access.authenticate(head, partial(raw_body, max_body))
        if tracing is not None and (trace := request_trace()) is not None:
            trace.authenticated(key.account_id, key.id)

    metrics = engine.metrics

    @app.after_request
    async def end_request(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = current_request_id()
        if metrics is not None:
            rule = request.url_rule
            metrics.http_answered(
                rule.rule if rule is not None else "unmatched",
                request.method if request.method in METHODS else "other",
                response.status_code,
                g.get("error_code", ""),
            )
        if request.path in CHAT_PATHS:
            # Proxies and CDNs must not buffer, transform or move these to HTTP/3 (the API
            # docs promise the headers on the response).
            response.headers.update(SSE_HEADERS)
        key = g.get("key")
        if key is not None:
            # The key's own limits; on a model call, the model's room over its deployments
            # for a dimension the key does not limit.
            now = trio.current_time()
            views = engine.limits.views(key, now)
            model = g.get("model")
            if model is not None and len(views) < 2:
                views = {**fleet_views(engine.router.snapshots(model), now), **views}
            for name, view in views.items():
                response.headers[f"x-ratelimit-limit-{name}"] = str(view.limit)
                response.headers[f"x-ratelimit-remaining-{name}"] = str(view.remaining)
                response.headers[f"x-ratelimit-reset-{name}"] = format_reset(view.reset_seconds)
        return response


def request_target(scope: Mapping[str, Any]) -> bytes:
    """The path as received (still percent-encoded), plus ``?query`` when there is one."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string") or b""
    return raw_path + b"?" + query if query else raw_path


async def raw_body(max_body: int, *, cache: bool = True) -> bytes:
    """The exact body bytes (kept for the view when ``cache``). Errors: RequestTooLarge
    (413); werkzeug's RequestTimeout when the body does not arrive in time (400)."""
    length = request.content_length
    if length is not None and length > max_body:
        raise RequestTooLarge(f"The request body exceeds {max_body} bytes.")
    body = await request.get_data(cache=cache, as_text=False, parse_form_data=False)
    if len(body) > max_body:
        raise RequestTooLarge(f"The request body exceeds {max_body} bytes.")
    return body
