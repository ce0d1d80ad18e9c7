"""The one rendering of errors: ``{"error": {"message", "type", "param", "code", "request_id"}}``
(:meth:`engine.errors.OmixaError.envelope`; the framework's own 404, 405 and 413 are mapped
to Omixa's errors first, in :mod:`web.http.app`).

Every response carries ``x-request-id`` equal to the envelope's ``request_id``.
Retryable errors (429, 503) carry ``Retry-After`` in whole seconds, rounded up.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

from quart import Response, g

from omixa.engine.errors import OmixaError

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def current_request_id() -> str:
    """The current request's id (assigned by :mod:`web.http.gate`; made here if a failure
    came before that)."""
    request_id = g.get("request_id")
    if request_id is None:
        request_id = g.request_id = new_request_id()
    return str(request_id)


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status=status, headers=headers, content_type="application/json")


def error_response(exc: OmixaError, request_id: str, headers: dict[str, str] | None = None) -> Response:
    payload = exc.envelope(request_id)
    g.error_code = exc.code  # for the request's metrics (web.http.gate)
    headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
    if exc.retry_after is not None and exc.status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return json_response(payload, exc.status, headers)
