"""The SSE relay: upstream events to the client, byte for byte, settled exactly once.

Pass-through policy: every upstream event is forwarded as received, except
- the usage frame (empty ``choices`` with ``usage``), which Omixa always requests upstream
  for billing and forwards only when the client set ``stream_options.include_usage``;
- Azure's filter-only frames (empty ``choices`` without usage: ``prompt_filter_results``,
  content-filter offsets), which crash many clients.

A failure after the stream started (reset, malformed frame, timeout, an upstream error
event) reaches the client as an OpenAI-shaped ``data: {"error": {...}}`` event, then the
stream ends; what was delivered is charged.

The relay owns the upstream response: it is closed by :meth:`StreamRelay.aclose`, which
the web layer guarantees to call (even when the client left before the first byte), and
which settles the request as ``client_closed`` (``interrupted`` during shutdown) if it had
not finished.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, AsyncIterator

import trio

from engine.errors import InternalError, OmixaError, UpstreamError
from engine.providers.base import SseEvent, Usage

if TYPE_CHECKING:
    from engine.chat import Exchange

log = logging.getLogger("omixa.relay")

# Bound on closing the upstream response when the relay ends.
CLOSE_TIMEOUT = 5.0


def error_event(exc: OmixaError, request_id: str) -> bytes:
    """An OpenAI-shaped error event."""
    payload = {
        "error": {
            "code": exc.code,
            "message": exc.message,
            "type": exc.type,
            "request_id": request_id,
        }
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class StreamRelay:
    """An async iterator of bytes for the response body."""

    def __init__(
        self,
        exchange: "Exchange",
        stream: AbstractAsyncContextManager[AsyncIterator[SseEvent]],
        events: AsyncIterator[SseEvent],
    ) -> None:
        self._exchange = exchange
        self._stream = stream
        self._events = events
        self._include_usage = exchange.request.include_usage
        self._usage: Usage | None = None
        self._delivered: list[str] = []
        self._done = False
        self._closed = False

    def __aiter__(self) -> "StreamRelay":
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            while True:
                event = await self._events.__anext__()
                out = self._accept(event)
                if out is not None:
                    return out
        except StopAsyncIteration:
            if self._done or self._usage is not None:
                await self._close("ok")
                raise
            failure: OmixaError = UpstreamError("The upstream stream ended unexpectedly.")
        except OmixaError as exc:
            failure = exc
        except Exception:
            log.exception("request %s: relay failed", self._exchange.caller.request_id)
            failure = InternalError()
        except BaseException:  # cancelled: the client left, or shutdown
            await self._close(self._exchange.cancelled_status())
            raise
        await self._close("interrupted" if self._delivered else failure.code)
        return error_event(failure, self._exchange.caller.request_id)

    def _accept(self, event: SseEvent) -> bytes | None:
        """The bytes to forward for ``event``, or None to drop it."""
        if event.done:
            self._done = True
            return event.raw
        data = event.data
        if data is None:
            return event.raw  # comments and data-less events carry no content
        if "error" in data and not data.get("choices"):
            error = data["error"] if isinstance(data["error"], dict) else {}
            raise UpstreamError(str(error.get("message") or "The upstream reported an error."))
        usage = data.get("usage")
        if usage:
            self._usage = Usage.from_openai(usage) or self._usage
        choices = data.get("choices")
        if not choices:
            return event.raw if usage and self._include_usage else None
        self._collect(choices)
        return event.raw

    def _collect(self, choices: Any) -> None:
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            for key in ("content", "reasoning_content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    self._delivered.append(text)
            for call in delta.get("tool_calls") or ():
                function = (call.get("function") if isinstance(call, dict) else None) or {}
                for key in ("name", "arguments"):
                    if isinstance(function.get(key), str):
                        self._delivered.append(function[key])
        if self._exchange.first_token_at is None and self._delivered:
            self._exchange.first_token_at = time.monotonic()

    async def aclose(self) -> None:
        """Close the upstream and settle; the client gets nothing more. Idempotent."""
        await self._close(self._exchange.cancelled_status())

    async def _close(self, status: str) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            try:
                await self._stream.__aexit__(None, None, None)
            except Exception as exc:
                # The connection is going away either way; nothing to settle from it.
                log.debug("closing upstream stream: %r", exc)
        if status in ("client_closed", "interrupted") and self._usage is not None and self._done:
            status = "ok"  # everything was sent before the client left
        usage = self._usage or self._exchange.delivered_usage("".join(self._delivered))
        await self._exchange.finish(status, usage)
