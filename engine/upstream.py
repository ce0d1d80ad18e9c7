"""What the engine and the provider adapters say to each other.

The engine's side of the adapter seam: :class:`Provider` is the interface every adapter
(Azure, Vertex, the simulator) implements, and :class:`Usage`, :class:`Completion` and
:class:`SseEvent` are the answers it hands back. Adapters import these; the engine reaches the
adapter package only to build an adapter (:mod:`engine.fleet`) and to ask for a provider's
own request checks (:func:`engine.providers.check_request`).

The request body handed to an adapter is already an OpenAI chat-completions body as the
engine wants it sent (output cap set, ``stream_options.include_usage`` set for streams); the
adapter adds what its upstream needs (URL, auth header, api-version) and nothing more.

Errors: adapters raise only :class:`engine.errors.UpstreamError` (an upstream HTTP error, a
malformed answer or a connection failure, with ``upstream_status`` and ``retry_after`` when
known) and :class:`engine.errors.UpstreamTimeout`. httpx's exceptions never pass this seam.

Cancellation: cancelling a call or leaving the stream's context closes the upstream
connection at once (HTTP/1.1: the upstream sees the disconnect), so an abandoned request
stops generating billed tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

import attrs

# No request has this many tokens; a usage claiming more is treated as malformed.
MAX_REPORTED_TOKENS = 100_000_000


def refuse_json_constant(name: str) -> Any:
    """A ``parse_constant`` hook: Python's decoder takes NaN, Infinity and -Infinity, which
    are not JSON. Errors: ValueError, always."""
    raise ValueError(f"{name} is not a JSON number")


# Upstream JSON, strictly: an answer that carries NaN or Infinity is malformed (502), never
# relayed or billed from. Takes a str (decode bytes as UTF-8 first). Errors: ValueError.
decode_upstream_json = json.JSONDecoder(parse_constant=refuse_json_constant).decode


# The names of the input and output counts and their details in each API's usage object.
_CHAT_USAGE = ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details")
_RESPONSES_USAGE = ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")


@attrs.frozen(kw_only=True)
class Usage:
    """Token usage in OpenAI's terms. ``completion_tokens`` includes ``reasoning_tokens``;
    ``prompt_tokens`` includes ``cached_tokens``."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """Read an OpenAI ``usage`` object, of chat completions (``prompt_tokens``,
        ``completion_tokens`` and their details) or of the Responses API (``input_tokens``,
        ``output_tokens`` and theirs); None if it is missing or malformed."""
        if not isinstance(usage, dict):
            return None
        names = _RESPONSES_USAGE if "input_tokens" in usage else _CHAT_USAGE
        try:
            prompt = int(usage.get(names[0]) or 0)
            completion = int(usage.get(names[1]) or 0)
            pdet = usage.get(names[2]) or {}
            cdet = usage.get(names[3]) or {}
            cached = int(pdet.get("cached_tokens") or 0) if isinstance(pdet, dict) else 0
            reasoning = int(cdet.get("reasoning_tokens") or 0) if isinstance(cdet, dict) else 0
        except (TypeError, ValueError, OverflowError):
            return None
        if min(prompt, completion, cached, reasoning) < 0:
            return None
        if max(prompt, completion) > MAX_REPORTED_TOKENS:
            return None  # nonsense from upstream; the engine falls back to its own count
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=min(cached, prompt),
            reasoning_tokens=min(reasoning, completion),
        )


@attrs.frozen(kw_only=True)
class Completion:
    """A non-streaming answer: the upstream's JSON object, ready to relay, and its usage."""

    body: dict[str, Any]
    usage: Usage | None


# An upstream's id of a call is kept only if it is this short and plain (visible ASCII): it
# goes into log lines and the request log as is.
MAX_UPSTREAM_ID_CHARS = 128


def plain_upstream_id(value: object) -> str | None:
    """``value`` as an upstream request id (a str of 1 to ``MAX_UPSTREAM_ID_CHARS`` visible
    ASCII characters), else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_UPSTREAM_ID_CHARS:
        return None
    return value if value.isascii() and value.isprintable() and " " not in value else None


@attrs.define
class CallIds:
    """What one attempt of a call is known by, on both sides. The exchange makes one per
    attempt and hands it to the adapter with the body.

    ``request_id`` is Omixa's (``req_...``, the client's ``x-request-id``): the adapter sends it
    where its upstream takes one (Azure: ``x-ms-client-request-id``; Vertex has no such
    header). ``upstream_id`` is the upstream's own id of the attempt, which the adapter sets
    as soon as the upstream names one (Azure: the response head's ``apim-request-id``, else
    ``x-request-id``, else ``x-ms-request-id``, failed answers included; Vertex: the body's
    ``responseId``, of a JSON answer or a stream's first event); None until then, and when the
    upstream named none (no answer came, or the id was not plain: :func:`plain_upstream_id`).
    """

    request_id: str
    upstream_id: str | None = None


@attrs.frozen(kw_only=True)
class SseEvent:
    """One server-sent event exactly as received (``raw`` ends with the blank line).

    ``data`` is the parsed JSON of the ``data:`` field (None for comments, ``[DONE]`` or an
    event without data); ``done`` marks ``data: [DONE]``; ``comment`` marks an event made only
    of comment lines (``: ...``), which carries no content.
    """

    raw: bytes
    data: dict[str, Any] | None = None
    done: bool = False
    comment: bool = False


class Provider(Protocol):
    """One upstream deployment's adapter."""

    name: str  # "azure", "vertex", "simulator"

    async def complete(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """Send a non-streaming chat completion and return the parsed answer. ``ids``: the
        attempt's (see :class:`CallIds`), in every method that calls the upstream."""
        ...

    def open_stream(
        self, body: dict[str, Any], ids: CallIds | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[SseEvent]]:
        """Start a streaming chat completion.

        Entering the context sends the request and waits for the response head (raising
        UpstreamError/UpstreamTimeout on an error status or failure); iterating yields each
        SSE event as soon as it is complete. Leaving the context closes the connection.
        """
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...


@runtime_checkable
class ResponsesProvider(Provider, Protocol):
    """An adapter that serves the Responses API (Azure natively; Vertex and the simulator
    through their chat translation, :mod:`engine.providers._responses`)."""

    async def respond(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """Send a non-streaming Responses API body; the response object and its usage."""
        ...

    def open_response_stream(
        self, body: dict[str, Any], ids: CallIds | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[SseEvent]]:
        """Start a streaming Responses API request (see :meth:`Provider.open_stream`)."""
        ...


@runtime_checkable
class StoringProvider(ResponsesProvider, Protocol):
    """An adapter whose upstream stores responses (Azure, the simulator)."""

    async def manage_response(self, method: str, path: str, ids: CallIds | None = None) -> dict[str, Any]:
        """Read, delete or cancel a stored response (``path`` after ``/responses``)."""
        ...


@runtime_checkable
class EmbeddingsProvider(Provider, Protocol):
    """An adapter that also serves embedding and image models (Azure, the simulator)."""

    async def embed(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """Send an OpenAI embeddings body; the answer and its usage."""
        ...

    async def generate_images(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """Send an OpenAI image-generation body; the answer (its usage is read by the caller)."""
        ...
