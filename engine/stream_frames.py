"""What a stream's events mean, per API: the relay (:mod:`engine.relay`) asks a reader about
each upstream event and moves bytes; the reader says what the event carries.

Chat completions (:class:`ChatFrames`): ``chat.completion.chunk`` frames, ended by
``data: [DONE]``. Omixa always asks the upstream for the usage frame (empty ``choices`` with
``usage``) and forwards it only when the client asked (``stream_options.include_usage``);
Azure's filter-only frames (empty ``choices`` without usage) are dropped unless
``streaming.keep_filter_frames``. An upstream ``{"error": ...}`` frame is a failure.

The Responses API (:class:`ResponseFrames`): typed events (``event: response.created`` ...),
each forwarded as received; ``response.completed`` and ``response.incomplete`` end the
stream and carry the usage; ``response.failed`` and ``error`` are failures. The response's
id comes with ``response.created``, which also commits the stream to its deployment: the
client now holds an id that only that resource knows, so no other deployment may take over.
Failures reach the client as a Responses ``error`` event.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import attrs

from omixa.engine.errors import OmixaError, UpstreamError
from omixa.engine.upstream import SseEvent, Usage


# Not frozen: a frozen attrs class's __init__ makes one call per field, on the relay's hot
# path (one Reading per upstream event); nothing changes a Reading once it is made.
@attrs.define
class Reading:
    """What one upstream event carries.

    ``forward``: send its bytes to the client; ``end``: the stream's last event (the relay
    settles before forwarding it); ``text``: content delivered with it (counted when the
    upstream reports no usage); ``commits``: from now on no other deployment may answer;
    ``answer_id``: the id of an answer the upstream stores; ``item_id``: the id of one of
    its output items.
    """

    forward: bool = True
    end: bool = False
    usage: Usage | None = None
    tier: str | None = None
    text: str = ""
    commits: bool = False
    answer_id: str | None = None
    item_id: str | None = None


_FORWARD = Reading()
_DROP = Reading(forward=False)
_END = Reading(end=True)


class FrameReader(Protocol):
    # The ``type`` of the events that end the stream, besides ``data: [DONE]``.
    end_types: frozenset[str]

    def read(self, event: SseEvent) -> Reading:
        """What ``event`` carries. Errors: UpstreamError for an upstream error event."""
        ...

    def error_event(self, exc: OmixaError, request_id: str) -> bytes:
        """The event that tells the client the stream failed."""
        ...


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class ChatFrames:
    """Chat-completion chunks (see the module docstring)."""

    __slots__ = ("_include_usage", "_keep_filter_frames")
    end_types: frozenset[str] = frozenset()  # [DONE] ends a chat stream

    def __init__(self, *, include_usage: bool, keep_filter_frames: bool) -> None:
        self._include_usage = include_usage
        self._keep_filter_frames = keep_filter_frames

    def read(self, event: SseEvent) -> Reading:
        if event.done:
            return _END
        data = event.data
        if data is None:
            return _FORWARD  # comments and data-less events carry no content
        if "error" in data and not data.get("choices"):
            error = data["error"] if isinstance(data["error"], dict) else {}
            raise UpstreamError(str(error.get("message") or "The upstream reported an error."))
        raw_tier = data.get("service_tier")
        tier = raw_tier if isinstance(raw_tier, str) else None
        usage = Usage.from_openai(data["usage"]) if data.get("usage") else None
        choices = data.get("choices")
        if not choices:
            forward = self._include_usage if data.get("usage") else self._keep_filter_frames
            return Reading(forward=forward, usage=usage, tier=tier)
        text = _choices_text(choices)
        if usage is None and tier is None and not text:
            return _FORWARD
        return Reading(usage=usage, tier=tier, text=text, commits=bool(text))

    def error_event(self, exc: OmixaError, request_id: str) -> bytes:
        """An OpenAI-shaped error frame: ``data: {"error": {...}}``."""
        return b"data: " + _dumps(exc.envelope(request_id)) + b"\n\n"


def function_text(function: Any) -> str:
    """A tool call's (or a legacy function call's) name and arguments, as counted when the
    upstream reports no usage."""
    if not isinstance(function, dict):
        return ""
    return "".join(function[key] for key in ("name", "arguments") if isinstance(function.get(key), str))


def _choices_text(choices: Any) -> str:
    # Concatenated, not joined: a frame carries one piece or a few (this runs per event).
    text = ""
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        for key in ("content", "reasoning_content", "refusal"):
            piece = delta.get(key)
            if isinstance(piece, str):
                text += piece
        for call in delta.get("tool_calls") or ():
            text += function_text(call.get("function") if isinstance(call, dict) else None)
        if "function_call" in delta:  # the legacy functions
            text += function_text(delta["function_call"])
    return text


# Responses events whose ``delta`` is content the client receives (text, tool-call
# arguments, a refusal, reasoning the model shows).
_CONTENT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)
_ENDS = frozenset({"response.completed", "response.incomplete"})


class ResponseFrames:
    """Responses API events (see the module docstring)."""

    __slots__ = ("_sequence", "_store", "_stored")
    end_types = _ENDS

    def __init__(self, *, store: bool) -> None:
        self._store = store  # the upstream keeps the response: report its id
        self._stored = False  # it said so (response.created): report its items' ids too
        self._sequence = -1  # the last sequence_number seen

    def read(self, event: SseEvent) -> Reading:
        data = event.data
        if data is None:
            return _FORWARD
        sequence = data.get("sequence_number")
        if isinstance(sequence, int):
            self._sequence = sequence
        kind = data.get("type")
        if kind in _CONTENT_DELTAS:
            delta = data.get("delta")
            text = delta if isinstance(delta, str) else ""
            return Reading(text=text, commits=True) if text else _FORWARD
        response = data.get("response")
        response = response if isinstance(response, dict) else {}
        if kind == "response.created":
            answer_id = response.get("id")
            self._stored = self._store and response.get("store") is not False and isinstance(answer_id, str)
            return Reading(commits=True, answer_id=answer_id if self._stored else None)
        if kind == "response.output_item.added" and self._stored:
            item = data.get("item")
            item_id = item.get("id") if isinstance(item, dict) else None
            return Reading(item_id=item_id) if isinstance(item_id, str) else _FORWARD
        if kind in _ENDS:
            tier = response.get("service_tier")
            usage = Usage.from_openai(response.get("usage"))
            return Reading(end=True, usage=usage, tier=tier if isinstance(tier, str) else None)
        if kind == "error":
            raise UpstreamError(str(data.get("message") or data.get("code") or "The upstream reported an error."))
        if kind == "response.failed":
            error = response.get("error")
            error = error if isinstance(error, dict) else {}
            raise UpstreamError(str(error.get("message") or error.get("code") or "The upstream response failed."))
        return _FORWARD

    def error_event(self, exc: OmixaError, request_id: str) -> bytes:
        """A Responses ``error`` event (OpenAI's fields, plus the request id), numbered after
        the last event the client received."""
        error = exc.envelope(request_id)["error"]
        data = {
            "type": "error",
            "code": error["code"],
            "message": error["message"],
            "param": error.get("param"),
            "request_id": request_id,
            "sequence_number": self._sequence + 1,
        }
        return b"event: error\ndata: " + _dumps(data) + b"\n\n"
