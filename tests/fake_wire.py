"""The wire helpers of the fake upstream servers (tests/fake_azure.py,
tests/fake_azure_responses.py, tests/fake_vertex.py): ASGI sends of a response head, an SSE
event, a whole body, a JSON answer, and Azure's error envelope.

Every response head of a request that set :data:`APIM_REQUEST_ID` (the fake Azure does, to
its ``FakeRequest.upstream_id``) carries it as ``apim-request-id``, as Azure's API gateway
sends its id of each call."""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

# Set by a fake in the task serving one request (each request has its own task, so its own
# value); None: no apim-request-id (the fake Vertex: Google sends none).
APIM_REQUEST_ID: ContextVar[str | None] = ContextVar("APIM_REQUEST_ID", default=None)

MSG_401 = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
           "provide a valid key for an active subscription and use a correct regional API "
           "endpoint for your resource.")  # fmt: skip


def azure_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def id_headers() -> list[tuple[bytes, bytes]]:
    """The head's ``apim-request-id`` of the request being served, if it has one."""
    upstream_id = APIM_REQUEST_ID.get()
    return [] if upstream_id is None else [(b"apim-request-id", upstream_id.encode())]


async def start(send: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *id_headers()]})


async def event(send: Any, data: dict[str, Any]) -> None:
    raw = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": raw, "more_body": True})


async def send_response(send: Any, status: int, raw: bytes, head: list) -> None:
    await start(send, status, [*head, (b"content-length", str(len(raw)).encode())])
    await send({"type": "http.response.body", "body": raw})


async def reply(send: Any, status: int, data: dict[str, Any]) -> None:
    await send_response(send, status, json.dumps(data).encode(),
                         [(b"content-type", b"application/json")])  # fmt: skip
