"""Authentication and request signatures for every ``/api/v1`` route, in one hook.

:func:`register` installs a ``before_request`` hook that runs before any ``/api/v1`` view,
whichever module registered it, so no route can forget it. It hands the request's head to
the engine's one authentication call (:meth:`engine.access.Access.authenticate`: the key,
and the signature where one is required or sent) and reads the body only when the engine
asks for it (within ``server.max_body_bytes``). The body is cached on the request
(``get_data(cache=True)``), so the view parses these same bytes. An unsigned paid model call
(:data:`PAID_PATHS`) may be served from this process's recent record of its key: its hold
re-checks in the database that the key is live.

Only then is the key put on ``g.key`` for the views (and the rate-limit headers). Nothing is
held or sent upstream before the hook has passed. A path that matches no route, or a method
the route does not allow, is left to the router (404/405) without authentication.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from quart import g, request
from quart_trio import QuartTrio

from omixa.engine.access import RequestHead
from omixa.engine.errors import RequestTooLarge
from omixa.engine.runtime import Engine
from omixa_client import NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

API_PREFIX = "/api/v1"
# Served to anyone: the API's description holds nothing of any account.
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json"})
# Model calls: each holds money first, and the hold checks that the key is still live.
PAID_PATHS = frozenset({"/api/v1/chat/completions", "/api/v1/embeddings", "/api/v1/images/generations"})


def register(app: QuartTrio, engine: Engine) -> None:
    max_body = engine.config.server.max_body_bytes

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
        g.key = await engine.access.authenticate(head, partial(raw_body, max_body))


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
