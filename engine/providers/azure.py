"""The Azure OpenAI adapter: chat completions (JSON and SSE), embeddings and image
generations on one deployment.

Wire format: ``POST {endpoint}/openai/deployments/{deployment}/{operation}
?api-version={api_version}`` with the key in the ``api-key`` header, over pooled HTTP/1.1;
``operation`` is ``chat/completions``, ``embeddings`` or ``images/generations``. The Responses
API has no deployment in its path: ``POST {endpoint}/openai/v1/responses`` (Azure's v1 API, no
api-version), with the deployment's name as the body's ``model``.

Every call sends Omixa's request id as ``x-ms-client-request-id`` and keeps Azure's id of
the call (``apim-request-id``, else ``x-request-id`` or ``x-ms-request-id``, of any answer,
error answers included) in the call's :class:`~engine.upstream.CallIds`.

The body is sent as the engine built it, except ``model``, which is removed: Azure routes by the
deployment in the URL and ignores it, and our catalog id means nothing to Azure. ``stream`` is
set by the method called (``complete`` sends none, ``open_stream`` sends ``true``).

Errors: :class:`UpstreamError` (``upstream_status`` = Azure's status, None when unreachable or
the connection broke; ``retry_after`` from ``retry-after-ms``, else ``Retry-After``, else the
"retry after N seconds" in Azure's message; ``upstream_code``, ``param`` and ``innererror``
from Azure's error body) and :class:`UpstreamTimeout`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import trio

from omixa.engine.config import DeploymentConfig, UpstreamConfig
from omixa.engine.errors import UPSTREAM_CODE, UpstreamError, UpstreamTimeout
from omixa.engine.providers._answers import MAX_COMPLETION_BYTES, MAX_MESSAGE_CHARS, parse_retry_after
from omixa.engine.providers._http import (
    STREAM_ERRORS,
    IdHeaders,
    UpstreamClient,
    make_client,
    open_streamed,
    post_answer,
    translate,
)
from omixa.engine.providers.sse import SseParser
from omixa.engine.upstream import CallIds, Completion, SseEvent, Usage, decode_upstream_json

# Ten base64 images of 1536x1024 are about 40 MB.
MAX_IMAGES_BYTES = 128 * 1024 * 1024
# Our request id goes to Azure as the client request id Azure's services log; Azure's own id
# of the call is its API gateway's ``apim-request-id`` (what Azure support asks for), else
# ``x-request-id`` or ``x-ms-request-id``.
AZURE_IDS = IdHeaders(b"x-ms-client-request-id", (b"apim-request-id", b"x-request-id", b"x-ms-request-id"))


class AzureProvider:
    """Adapter for one Azure OpenAI deployment.

    Args:
        deployment: endpoint, deployment name, api-version and (resolved) key.
        upstream: timeouts, and the pool size when no client is given.
        client: a shared client (see :class:`~engine.providers._http.HttpClients`); the
            provider then does not close it. Without one it makes and owns its own.
    """

    name = "azure"

    def __init__(
        self,
        deployment: DeploymentConfig,
        upstream: UpstreamConfig,
        client: UpstreamClient | None = None,
    ) -> None:
        base = deployment.endpoint.rstrip("/")
        prefix = f"{base}/openai/deployments/{quote(deployment.deployment, safe='')}"
        query = f"?api-version={quote(deployment.api_version, safe='')}"
        self._url = f"{prefix}/chat/completions{query}"
        self._embeddings_url = f"{prefix}/embeddings{query}"
        self._images_url = f"{prefix}/images/generations{query}"
        self._responses_url = f"{base}/openai/v1/responses"
        self._deployment = deployment.deployment
        self._headers = {
            "api-key": deployment.api_key,
            "content-type": "application/json",
            # Raw bytes are relayed as received: no compressed stream surprises.
            "accept-encoding": "identity",
        }
        self._timeout = upstream.request_timeout_seconds
        self._head_timeout = upstream.timeout_seconds
        self._owns_client = client is None
        self._client = client if client is not None else make_client(upstream)

    async def complete(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """POST a non-streaming chat completion and return Azure's JSON answer and usage.
        ``ids``: our request id is sent as ``x-ms-client-request-id``, and Azure's id of the
        call (:data:`AZURE_IDS`) kept in it, in this method and every other that calls Azure.

        Errors: UpstreamError (error status, body not a JSON object, unreachable upstream),
        UpstreamTimeout (no complete answer within ``request_timeout_seconds``).
        Cancellation: closes the connection; the pool opens a new one next time.
        """
        return await self._post(self._url, body, MAX_COMPLETION_BYTES, ids)

    async def embed(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """POST an embeddings request; Azure's JSON answer and its usage (prompt tokens).

        Errors and cancellation: as :meth:`complete`.
        """
        return await self._post(self._embeddings_url, body, MAX_COMPLETION_BYTES, ids)

    async def generate_images(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """POST an image generation; Azure's JSON answer (``data[].b64_json``, and a
        gpt-image-1 ``usage`` the caller reads itself).

        Errors and cancellation: as :meth:`complete`.
        """
        return await self._post(self._images_url, body, MAX_IMAGES_BYTES, ids)

    async def respond(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """POST a non-streaming Responses API request; Azure's response object and its usage.

        Errors and cancellation: as :meth:`complete`.
        """
        return await self._post(self._responses_url, body, MAX_COMPLETION_BYTES, ids, model=self._deployment)

    @asynccontextmanager
    async def open_response_stream(
        self, body: dict[str, Any], ids: CallIds | None = None
    ) -> AsyncIterator[AsyncIterator[SseEvent]]:
        """Start a streaming Responses API request; yield an iterator of its typed SSE events
        (``response.created`` ... ``response.completed``). As :meth:`open_stream` otherwise."""
        unsent = [_content(body, stream=True, model=self._deployment)]
        del body

        async def prepare() -> tuple[dict[str, str], bytes]:
            return self._headers, unsent.pop()

        url = self._responses_url
        async with open_streamed(
            self._client, url, prepare, self._head_timeout, error_from_response, ids=ids, id_headers=AZURE_IDS
        ) as chunks:
            yield _Events(chunks)

    async def manage_response(self, method: str, path: str, ids: CallIds | None = None) -> dict[str, Any]:
        """A call on the resource's stored responses: ``method`` ("GET", "DELETE", "POST")
        on ``{endpoint}/openai/v1/responses{path}`` (e.g. ``/resp_1/input_items?limit=20``);
        Azure's JSON answer.

        Errors: as :meth:`complete` (the upstream's 404 for a response it does not hold).
        """
        content = b"{}" if method == "POST" else b""
        url = self._responses_url + path
        return await self._answer(url, content, MAX_COMPLETION_BYTES, ids, method=method.encode("ascii"))

    async def _post(
        self, url: str, body: dict[str, Any], limit: int, ids: CallIds | None, *, model: str | None = None
    ) -> Completion:
        data = await self._answer(url, _content(body, stream=False, model=model), limit, ids)
        return Completion(body=data, usage=Usage.from_openai(data.get("usage")))

    async def _answer(
        self, url: str, content: bytes, limit: int, ids: CallIds | None, *, method: bytes = b"POST"
    ) -> dict[str, Any]:
        """Send ``content``; Azure's JSON object, within ``request_timeout_seconds``."""
        with trio.move_on_after(self._timeout) as deadline:
            status, raw = await post_answer(
                self._client, url, self._headers, content, limit, error_from_response,
                method=method, ids=ids, id_headers=AZURE_IDS,
            )  # fmt: skip
        if deadline.cancelled_caught:
            raise UpstreamTimeout("The upstream did not answer in time.")
        try:
            data = decode_upstream_json(raw.decode())
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError("Upstream answered with a body that is not a JSON object.", upstream_status=status)
        return data

    @asynccontextmanager
    async def open_stream(
        self, body: dict[str, Any], ids: CallIds | None = None
    ) -> AsyncIterator[AsyncIterator[SseEvent]]:
        """Start a streaming chat completion; yield an iterator of its SSE events.

        Entering sends the request and waits for the response head. The response is owned
        here, never by the iterator, so it is closed on every exit path (an ``aclose()`` on a
        generator that never started skips its ``finally``: a response held by one leaks when
        the client goes early).

        Errors: UpstreamError/UpstreamTimeout on entering (error status, unreachable, no head
        within ``timeout_seconds``) and while iterating (connection broken, no bytes for the
        client's read timeout, malformed frame, stream cut inside a frame).
        Cancellation: leaving the block, normally or by cancellation, closes the connection at
        once (HTTP/1.1): Azure sees the disconnect and stops generating.
        """
        # Handed over once, so a long stream keeps nothing of its prompt (see open_streamed).
        unsent = [_content(body, stream=True)]
        del body

        async def prepare() -> tuple[dict[str, str], bytes]:
            return self._headers, unsent.pop()

        async with open_streamed(
            self._client, self._url, prepare, self._head_timeout, error_from_response, ids=ids, id_headers=AZURE_IDS
        ) as chunks:
            yield _Events(chunks)

    async def aclose(self) -> None:
        """Close the pooled connections, if the client is ours."""
        if self._owns_client:
            await self._client.aclose()


def _content(body: dict[str, Any], *, stream: bool, model: str | None = None) -> bytes:
    """The JSON body Azure gets: ``model`` removed (or, for the Responses API, the deployment's
    name), ``stream`` set by the call made."""
    payload = {k: v for k, v in body.items() if k not in ("model", "stream")}
    if model is not None:
        payload["model"] = model
    if stream:
        payload["stream"] = True
    else:
        payload.pop("stream_options", None)  # Azure rejects it without stream
    # ASCII-escaped JSON: a lone surrogate from a client's "\\ud800" stays encodable.
    return json.dumps(payload, separators=(",", ":")).encode()


class _Events:
    """Async iterator of the SSE events of a streamed response body (owned by the caller)."""

    __slots__ = ("_chunks", "_parser", "_pending")

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._parser = SseParser()
        self._pending: deque[SseEvent] = deque()

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> SseEvent:
        while not self._pending:
            if self._parser.failure is not None:
                raise self._parser.failure
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._parser.close()
                raise
            except STREAM_ERRORS as exc:
                raise translate(exc) from exc
            self._pending.extend(self._parser.feed(chunk))
        return self._pending.popleft()


def error_from_response(response: httpx.Response, raw: bytes) -> UpstreamError:
    """The UpstreamError for a non-2xx Azure answer: status, Azure's message, retry-after,
    and what else Azure's ``{"error": {...}}`` says of the request (:func:`_detail`)."""
    status = response.status_code
    message = None
    try:
        envelope = json.loads(raw)
    except ValueError:
        envelope = None
    error = envelope.get("error") if isinstance(envelope, dict) else None
    if not isinstance(error, dict):
        error = {}
    message = error.get("message") or error.get("code")
    if not isinstance(message, str) or not message:
        message = f"Upstream answered HTTP {status}."
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    code, param, inner = _detail(error)
    return UpstreamError(
        message,
        upstream_status=status,
        retry_after=parse_retry_after(response.headers, raw),
        upstream_code=code,
        param=param,
        innererror=inner,
    )


MAX_PARAM_CHARS = 256
MAX_INNERERROR_BYTES = 8192


def _detail(error: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(code, param, innererror) of Azure's error object, each None unless it has the shape
    OpenAI's has: a short word, a short string, and an object (Azure's chat content filter
    sends ``innererror``, its image one ``inner_error``) of at most 8 KiB."""
    code = error.get("code")
    param = error.get("param")
    inner = error.get("innererror", error.get("inner_error"))
    if not isinstance(inner, dict) or len(json.dumps(inner)) > MAX_INNERERROR_BYTES:
        inner = None
    return (
        code if isinstance(code, str) and UPSTREAM_CODE.fullmatch(code) else None,
        param if isinstance(param, str) and 0 < len(param) <= MAX_PARAM_CHARS else None,
        inner,
    )
