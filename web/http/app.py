"""The Quart-Trio application: its settings, hooks, error handlers and routes, put together.

The app only translates HTTP to engine calls and back; it reaches the actors through the
engine's services (which talk to them over bounded channels). What every request passes on
its way in and out is :mod:`web.http.gate`'s; the model calls are :mod:`web.http.model_calls`'s.
Errors of every kind are rendered by :func:`web.http.envelope.error_response`.
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

from omixa.engine.errors import (
    InternalError,
    InvalidApiKey,
    InvalidRequest,
    MethodNotAllowed,
    NotFoundError,
    OmixaError,
    RequestTooLarge,
)
from omixa.engine.intake import decode_json
from omixa.engine.metrics import CONTENT_TYPE
from omixa.engine.money import format_usd
from omixa.engine.runtime import Engine
from omixa.storage import ApiKeyRecord
from omixa.web.http import catalog_routes, dashboard, gate, model_calls, wallet_api
from omixa.web.http.deployment_view import deployment_view
from omixa.web.http.envelope import current_request_id, error_response, json_response
from omixa.web.http.openapi import openapi_document

log = logging.getLogger("omixa.web")


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

    gate.register(app, engine)  # request ids, the URL check, authentication, the response headers

    async def authenticate() -> ApiKeyRecord:
        return g.key  # set by the gate's hook, which runs before every /api/v1 view

    @app.errorhandler(OmixaError)
    async def on_omixa_error(exc: OmixaError) -> Response:
        return error_response(exc, current_request_id())

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
        return error_response(mapped, current_request_id(), headers)

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Response:
        log.exception("request %s failed", current_request_id(), exc_info=exc)
        return error_response(InternalError(), current_request_id())

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

    @app.get("/readyz")
    async def readyz() -> Response:
        problems = await engine.readiness()
        body = {"status": "not_ready", "problems": problems} if problems else {"status": "ready"}
        return json_response(body, status=503 if problems else 200)

    admin_token = os.environ.get("OMIXA_ADMIN_TOKEN", "")

    def require_admin() -> None:
        """Operators only (bearer OMIXA_ADMIN_TOKEN); without that token set, no such route."""
        if not admin_token:
            raise NotFoundError(f"No route for {request.method} {request.path}.")
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
            raise InvalidApiKey("Send the admin token as 'Authorization: Bearer ...'.")

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus's text format, for operators (engine/metrics.py; also on ``[metrics]
        bind``, without the token). This process's sampled state is read first."""
        if engine.metrics is None:
            raise NotFoundError(f"No route for {request.method} {request.path}.")
        require_admin()
        if engine.sampler is not None:
            await engine.sampler.sample()
        body = await trio.to_thread.run_sync(engine.metrics.exposition)
        return Response(body, status=200, content_type=CONTENT_TYPE)

    @app.get("/admin/deployments")
    async def admin_deployments() -> Response:
        """Each deployment's published state, for operators (bearer OMIXA_ADMIN_TOKEN)."""
        require_admin()
        now = trio.current_time()
        return json_response({"object": "list", "data": [deployment_view(actor, now) for actor in engine.deployments]})

    catalog_routes.register(app, engine, authenticate)
    serve_chat = model_calls.register(
        app,
        engine,
        authenticate=authenticate,
        read_body=partial(gate.raw_body, max_body, cache=False),  # the gate's bytes, if it read them
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

    dashboard.register(app, engine, serve_chat)
    return app


async def _json_body(max_body: int) -> Any:
    """The request's JSON. Errors: RequestTooLarge, InvalidRequest."""
    return decode_json(await gate.raw_body(max_body, cache=False))  # the gate's bytes, if it read them
