"""The Vertex AI Gemini adapter: ``generateContent`` and ``streamGenerateContent?alt=sse``.

Wire format: ``POST {base}/v1/projects/{project}/locations/{location}/publishers/google/models/
{model}:generateContent`` (``:streamGenerateContent?alt=sse`` for streams), where ``base`` is
``https://{location}-aiplatform.googleapis.com``, or ``https://aiplatform.googleapis.com`` for
the ``global`` location, unless the deployment's ``endpoint`` overrides it. Express mode (an
API key and no project) uses ``{base}/v1/publishers/google/models/{model}:...``. Auth: the
API key in ``x-goog-api-key`` (kept out of URLs and logs), or a service account's OAuth token
(:mod:`engine.providers.google_auth`) as ``Authorization: Bearer``.

Ids: no id of ours is sent (Google has no client request id header); Vertex's id of a call
is the answer's ``responseId`` (a stream repeats it in every event), kept in the call's
:class:`~engine.upstream.CallIds`. An error answer names none.

Bodies are translated by :mod:`engine.providers.gemini`: the engine hands an OpenAI body and
gets back a ``chat.completion`` (``complete``) or already OpenAI-shaped ``chat.completion.chunk``
events ending with ``data: [DONE]`` (``open_stream``), so the relay treats Vertex streams
exactly as Azure's.

Errors: :class:`UpstreamError` with Vertex's status (``{"error": {"code", "message",
"status"}}``, also inside a JSON array), ``retry_after`` from ``Retry-After`` or a
``google.rpc.RetryInfo`` detail; :class:`UpstreamTimeout`.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
import httpx
import trio

from omixa.engine.config import DeploymentConfig, UpstreamConfig
from omixa.engine.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from omixa.engine.providers import _responses, gemini
from omixa.engine.providers._answers import MAX_COMPLETION_BYTES, MAX_MESSAGE_CHARS, parse_retry_after
from omixa.engine.providers._http import STREAM_ERRORS, HttpClients, open_streamed, post_answer, translate
from omixa.engine.providers.sse import SseParser
from omixa.engine.upstream import CallIds, Completion, SseEvent, decode_upstream_json, plain_upstream_id

if TYPE_CHECKING:
    from omixa.engine.providers.google_auth import ServiceAccount, ServiceAccountTokens

_DELAY = re.compile(r"(\d+(?:\.\d+)?)s")


def base_url(location: str) -> str:
    """Vertex's default base URL for ``location``."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def model_url(deployment: DeploymentConfig) -> str:
    """The model's resource URL, without the ``:method`` suffix."""
    base = (deployment.endpoint or base_url(deployment.location)).rstrip("/")
    model = quote(deployment.deployment or deployment.model, safe="")
    if deployment.project:
        project, location = quote(deployment.project, safe=""), quote(deployment.location, safe="")
        return f"{base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}"
    return f"{base}/v1/publishers/google/models/{model}"  # express mode


def service_account(deployment: DeploymentConfig) -> tuple[ServiceAccount, DeploymentConfig]:
    """Read the deployment's service account file. Returns the account and the deployment
    with its project (the file's ``project_id`` when the config names none).

    Errors: ValueError naming the config key (an unreadable or invalid file, no project).
    """
    # Imported here, not at import: PyJWT and cryptography take about 9 MB of memory that a
    # gateway without service accounts need not carry.
    from omixa.engine.providers import google_auth

    try:
        account = google_auth.load_service_account(deployment.service_account_file)
    except ValueError as exc:
        raise ValueError(f"service_account_file: {exc}") from None
    project = deployment.project or account.project_id
    if not project:
        raise ValueError("project: required (the service account file names none)")
    return account, attrs.evolve(deployment, project=project)


class VertexProvider:
    """Adapter for one Vertex Gemini deployment.

    Args:
        deployment: location, project, model, and the API key or service account file.
        upstream: timeouts, and the pool size when no client is given.
        clients: shared HTTP clients, one per origin (for Vertex and the token endpoint; not
            closed here); without them the provider makes and owns its own.

    Errors: ValueError if the service account file cannot be used (checked at start-up).
    """

    name = "vertex"

    def __init__(
        self,
        deployment: DeploymentConfig,
        upstream: UpstreamConfig,
        clients: HttpClients | None = None,
    ) -> None:
        account = None
        if deployment.service_account_file:
            account, deployment = service_account(deployment)
        self._model = deployment.model
        url = model_url(deployment)
        self._generate_url = f"{url}:generateContent"
        self._stream_url = f"{url}:streamGenerateContent?alt=sse"
        self._headers = {"content-type": "application/json", "accept-encoding": "identity"}
        self._timeout = upstream.request_timeout_seconds
        self._head_timeout = upstream.timeout_seconds
        self._owned = clients is None
        self._clients = clients if clients is not None else HttpClients(upstream)
        self._client = self._clients.for_endpoint(url)
        self._tokens: ServiceAccountTokens | None = None
        if account is not None:
            from omixa.engine.providers.google_auth import ServiceAccountTokens

            self._tokens = ServiceAccountTokens(account, self._clients.for_endpoint(account.token_uri))
        else:
            self._headers["x-goog-api-key"] = deployment.api_key

    async def complete(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """``generateContent``, answered as a ``chat.completion``. ``ids``: Vertex takes no id
        of ours (Google has no client request id header); its ``responseId`` is kept in
        ``ids.upstream_id`` (here, and from a stream's first event that has one).

        Errors: UpstreamError, UpstreamTimeout (no answer within ``request_timeout_seconds``).
        Cancellation: closes the connection.
        """
        with trio.move_on_after(self._timeout):
            headers, content = await self._prepare(body)
            status, raw = await post_answer(
                self._client, self._generate_url, headers, content, MAX_COMPLETION_BYTES, error_from_response
            )
            try:
                data = decode_upstream_json(raw.decode())
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise UpstreamError("Vertex answered with a body that is not a JSON object.", upstream_status=status)
            if ids is not None:
                ids.upstream_id = plain_upstream_id(data.get("responseId"))
            answer, usage = gemini.to_completion(data, self._model)
            return Completion(body=answer, usage=usage)
        raise UpstreamTimeout("The upstream did not answer in time.")

    @asynccontextmanager
    async def open_stream(
        self, body: dict[str, Any], ids: CallIds | None = None
    ) -> AsyncIterator[AsyncIterator[SseEvent]]:
        """``streamGenerateContent?alt=sse``; yields OpenAI ``chat.completion.chunk`` events.

        The response is owned here and closed on every exit path. Errors on entering
        (status, unreachable, no head within ``timeout_seconds``) and while iterating
        (broken connection, malformed or error event, a stream that ends before any finish
        reason): UpstreamError / UpstreamTimeout.
        """
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        # Handed over once, so a long stream keeps nothing of its prompt (see open_streamed).
        unsent = [body]
        del body

        async def prepare() -> tuple[dict[str, str], bytes]:  # a token fetch counts towards the head's bound
            return await self._prepare(unsent.pop())

        async with open_streamed(
            self._client, self._stream_url, prepare, self._head_timeout, error_from_response
        ) as chunks:
            encoder = gemini.ChunkEncoder(self._model, include_usage=include_usage)
            yield _Chunks(chunks, encoder, ids)

    async def respond(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """A Responses API body, answered through ``generateContent`` as a response object
        (see :mod:`engine.providers._responses`; nothing is stored)."""
        shell = _responses.response_shell(body, _responses.new_response_id(), self._model, store=False)
        return _responses.completion_as_response(await self.complete(_responses.chat_body(body), ids), shell)

    @asynccontextmanager
    async def open_response_stream(
        self, body: dict[str, Any], ids: CallIds | None = None
    ) -> AsyncIterator[AsyncIterator[SseEvent]]:
        """A streaming Responses API body, through ``streamGenerateContent``: Azure's typed
        Responses events. As :meth:`open_stream` otherwise."""
        shell = _responses.response_shell(body, _responses.new_response_id(), self._model, store=False)
        chat = {**_responses.chat_body(body), "stream_options": {"include_usage": True}}
        del body
        async with self.open_stream(chat, ids) as chunks:
            yield _responses.ResponseEvents(chunks, shell)

    async def aclose(self) -> None:
        """Close the clients, if they are this provider's own."""
        if self._owned:
            await self._clients.aclose()

    async def _prepare(self, body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        """The request's headers (with a fresh token when a service account is used) and
        its Gemini JSON body."""
        try:
            payload = gemini.to_gemini(body, self._model)
        except InvalidRequest as exc:  # the engine checks first; a 400 all the same if not
            raise UpstreamError(exc.message, upstream_status=400, param=exc.param) from None
        headers = self._headers
        if self._tokens is not None:
            headers = {**headers, "authorization": f"Bearer {await self._tokens.token()}"}
        return headers, json.dumps(payload, separators=(",", ":")).encode()


class _Chunks:
    """Async iterator of OpenAI chunk events made from a Vertex SSE body (owned by the caller)."""

    def __init__(self, chunks: AsyncIterator[bytes], encoder: gemini.ChunkEncoder, ids: CallIds | None = None) -> None:
        self._chunks = chunks
        self._encoder = encoder
        self._ids = ids  # its upstream_id is taken from the first event that names one
        self._parser = SseParser()
        self._pending: deque[SseEvent] = deque()
        self._ended = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> SseEvent:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            if self._parser.failure is not None:
                raise self._parser.failure
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._parser.close()
                if not self._encoder.finished:
                    raise UpstreamError("The Vertex stream ended before a finish reason.") from None
                self._ended = True
                self._pending.extend(SseEvent(raw=raw, data=data, done=data is None)
                                     for raw, data in self._encoder.finish())  # fmt: skip
                continue
            except STREAM_ERRORS as exc:
                raise translate(exc) from exc
            for event in self._parser.feed(chunk):
                if event.data is None:
                    continue  # comments; Vertex sends no [DONE]
                if self._ids is not None and self._ids.upstream_id is None:
                    self._ids.upstream_id = plain_upstream_id(event.data.get("responseId"))
                for raw, data in self._encoder.feed(event.data):
                    self._pending.append(SseEvent(raw=raw, data=data))
        return self._pending.popleft()


def error_from_response(response: httpx.Response, raw: bytes) -> UpstreamError:
    """The UpstreamError for a non-2xx Vertex answer: status, Google's message, retry delay."""
    status = response.status_code
    try:
        envelope: Any = json.loads(raw)
    except ValueError:
        envelope = None
    if isinstance(envelope, list) and envelope:  # streamGenerateContent may wrap it in an array
        envelope = envelope[0]
    error = envelope.get("error") if isinstance(envelope, dict) else None
    message, retry_after = None, parse_retry_after(response.headers)
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(error.get("status"), str) and isinstance(message, str):
            message = f"{error['status']}: {message}"
        for detail in error.get("details") or ():
            delay = detail.get("retryDelay") if isinstance(detail, dict) else None
            match = _DELAY.fullmatch(delay) if isinstance(delay, str) else None
            if match and retry_after is None:
                retry_after = float(match.group(1))
    if not isinstance(message, str) or not message:
        message = f"Vertex answered HTTP {status}."
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return UpstreamError(message, upstream_status=status, retry_after=retry_after)
