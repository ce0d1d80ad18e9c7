"""The Quart-Trio application: the OpenAI-compatible ``/api/v1`` surface.

The app only translates HTTP to engine calls and back; it reaches the actors through the
engine's services (which talk to them over bounded channels). Errors of every kind are
rendered by :func:`web.envelope.error_response`.
"""

from __future__ import annotations

import hmac
import logging
import os
from functools import partial
from importlib.metadata import version
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from omixa.engine.deployment import DeploymentActor
from omixa.engine.errors import (
    InternalError,
    InvalidApiKey,
    InvalidRequest,
    MethodNotAllowed,
    NotFoundError,
    OmixaError,
    RequestTooLarge,
)
from omixa.engine.exchange import Caller
from omixa.engine.intake import decode_json
from omixa.engine.keylimits import fleet_views, format_reset
from omixa.engine.money import format_usd
from omixa.engine.runtime import Engine
from omixa.storage import ApiKeyRecord
from omixa.web.http import catalog_routes, dashboard, model_calls, signing, wallet_api
from omixa.web.http.envelope import REQUEST_ID_HEADER, error_response, json_response, new_request_id
from omixa.web.http.lifecycle import bind_to_request
from omixa.web.http.openapi import openapi_document

log = logging.getLogger("omixa.web")

# The routes that stream chat completions (the API's and the dashboard playground's).
CHAT_PATHS = frozenset({"/api/v1/chat/completions", "/playground/chat/completions"})
SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Alt-Svc": "clear",
}


def create_app(engine: Engine) -> QuartTrio:
    app = QuartTrio(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=engine.config.server.max_body_bytes,
        # Long streams and slow reasoning models are bounded by the upstream timeout instead.
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=60,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=engine.config.server.shutdown_grace_seconds,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    max_body = engine.config.server.max_body_bytes

    @app.before_request
    async def begin_request() -> None:
        g.request_id = new_request_id()
        # A NUL can be percent-encoded into a path or query, but no id, filter or name holds
        # one (and PostgreSQL refuses it in text): refuse it here, once, for every route.
        # (A raw NUL cannot reach here: the HTTP parser refuses it. Encoded, it is %00.)
        if "\x00" in request.path or b"%00" in request.query_string:
            raise InvalidRequest("The request URL must not contain NUL characters.")

    @app.after_request
    async def add_request_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = _request_id()
        if request.path in CHAT_PATHS:
            # Streamed or not, error or not: proxies and CDNs must not buffer, transform or
            # move these to HTTP/3 (the API docs promise the headers on the response).
            response.headers.update(SSE_HEADERS)
        key = g.get("key")
        if key is not None:
            # OpenAI's rate-limit headers, on every response to a known key: the key's own
            # limits; on a model call, the model's room over its deployments for a dimension
            # the key does not limit.
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

    signing.register(app, engine)  # authenticates (and verifies signatures) on /api/v1

    async def authenticate() -> ApiKeyRecord:
        return g.key  # set by web.signing's hook, which runs before every /api/v1 view

    @app.errorhandler(OmixaError)
    async def on_omixa_error(exc: OmixaError) -> Response:
        return error_response(exc, _request_id())

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException) -> Response:
        mapped: OmixaError
        headers: dict[str, str] = {}
        if exc.code == 404:
            mapped = NotFoundError(f"No route for {request.method} {request.path}.")
        elif exc.code == 405:
            mapped = MethodNotAllowed(f"{request.method} is not allowed on {request.path}.")
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        elif exc.code == 413:
            mapped = RequestTooLarge(f"The request body exceeds {max_body} bytes.")
        else:
            mapped = InvalidRequest(exc.description or "The request is not valid.")
        return error_response(mapped, _request_id(), headers)

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Response:
        log.exception("request %s failed", _request_id(), exc_info=exc)
        return error_response(InternalError(), _request_id())

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response(
            {
                "status": "ok",
                "deployments": len(engine.deployments),
                # Request logs waiting for the database, and those lost past usage.buffer_limit.
                "usage_backlog": engine.usage.backlog,
                "usage_dropped": engine.usage.dropped,
            }
        )

    admin_token = os.environ.get("OMIXA_ADMIN_TOKEN", "")

    @app.get("/admin/deployments")
    async def admin_deployments() -> Response:
        """Each deployment's published state, for operators (bearer OMIXA_ADMIN_TOKEN)."""
        if not admin_token:
            raise NotFoundError(f"No route for {request.method} {request.path}.")
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
            raise InvalidApiKey("Send the admin token as 'Authorization: Bearer ...'.")
        now = trio.current_time()
        return json_response({"object": "list", "data": [_deployment_view(actor, now) for actor in engine.deployments]})

    catalog_routes.register(app, engine, authenticate)
    model_calls.register(
        app,
        engine,
        authenticate=authenticate,
        read_body=partial(signing.raw_body, max_body, cache=False),
        request_id=_request_id,
    )

    @app.get("/api/v1/wallet")
    async def wallet() -> Response:
        key = await authenticate()
        state = await engine.accounts.wallet(key.account_id)
        return json_response(
            {
                "object": "wallet",
                "balance": format_usd(state.balance),
                "locked_balance": format_usd(state.locked),
                "available": format_usd(state.available),
                "currency": "USD",
            }
        )

    wallet_api.register(app, engine, authenticate, lambda: _json_body(max_body))

    spec = openapi_document(version("omixa"))

    @app.get("/api/v1/openapi.json")
    async def openapi_json() -> Response:
        return json_response(spec)

    async def serve_chat(key: ApiKeyRecord) -> Response:
        """Answer the current request's chat completion for ``key`` (the API and the
        dashboard's playground: same engine, limits, billing and wallet)."""
        g.key = key
        chat = engine.chat
        parsed = await engine.intake.take(
            key,
            request.content_length,
            partial(signing.raw_body, max_body, cache=False),  # the signing hook's bytes, if it read them
            chat.parser(),
        )
        g.model = parsed.model.id
        caller = Caller(request_id=_request_id(), key=key)
        if not parsed.stream:
            return json_response(await chat.complete(caller, parsed))
        relay = bind_to_request(await chat.open_stream(caller, parsed))
        response = Response(relay, status=200, headers=SSE_HEADERS, content_type="text/event-stream")
        response.timeout = None  # never cut a long stream
        return response

    @app.post("/api/v1/chat/completions")
    async def chat_completions() -> Response:
        return await serve_chat(await authenticate())

    dashboard.register(app, engine, serve_chat)
    return app


def _deployment_view(actor: DeploymentActor, now: float) -> dict[str, Any]:
    snap = actor.snapshot
    cooldown = snap.available_at - now
    return {
        "name": snap.name,
        "model": snap.model,
        "provider": actor.config.provider,
        "endpoint": actor.config.endpoint or None,
        "region": snap.region,
        "enabled": snap.enabled,
        "weight": snap.weight,
        "health": snap.health,
        "cooldown_seconds": round(cooldown, 3) if cooldown > 0 else 0,
        "in_flight": snap.in_flight,
        "requests": snap.requests,
        "failures": snap.failures,
        "tokens_used": snap.tokens_used,
        "windows": {name: {"used": view.used, "limit": view.limit} for name, view in snap.windows.items()},
        "latency_ms": round(snap.latency_s * 1000, 1) if snap.latency_s is not None else None,
        "last_outcome": snap.last_outcome,
        "last_error": snap.last_error,
    }


def _request_id() -> str:
    request_id = g.get("request_id")
    if request_id is None:
        request_id = g.request_id = new_request_id()
    return request_id


async def _json_body(max_body: int) -> Any:
    """The request's JSON. Errors: RequestTooLarge, InvalidRequest."""
    return decode_json(await signing.raw_body(max_body, cache=False))  # the signing hook's bytes, if it read them
