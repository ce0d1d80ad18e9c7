"""Translating between OpenAI chat completions and Gemini's ``generateContent`` (pure, no I/O).

Request: :func:`check_request` refuses what cannot be translated (called before anything is
held, so a refusal changes nothing); :func:`to_gemini` builds the Vertex body.
- ``system``/``developer`` messages -> ``systemInstruction``; ``user`` -> ``user``;
  ``assistant`` -> ``model``; consecutive messages of one role are merged into one turn.
- content parts: ``text``; ``image_url`` with a ``data:`` URL -> ``inlineData``. Remote image
  URLs, audio, files, tools and tool messages are refused.
- ``max_completion_tokens``/``max_tokens`` -> ``maxOutputTokens`` (it bounds thinking plus
  answer tokens, so the hold covers both), ``temperature``, ``top_p`` -> ``topP``, ``stop`` ->
  ``stopSequences``, ``n`` -> ``candidateCount``, ``presence_penalty``, ``frequency_penalty``,
  ``seed``, ``response_format`` -> ``responseMimeType`` (+ ``responseJsonSchema``),
  ``reasoning_effort`` -> ``thinkingConfig`` (:data:`THINKING`).
- dropped: :data:`DROPPED`; anything else is refused with its name.

Response: :func:`to_completion` (``chat.completion``) and :class:`ChunkEncoder`
(``chat.completion.chunk`` frames). ``thought`` parts are never content; ``usageMetadata``
becomes OpenAI usage (completion = candidates + thoughts); :data:`FINISH_REASONS` maps
``finishReason``. A blocked prompt (``promptFeedback.blockReason``, no candidates) answers one
choice with empty content, a ``refusal`` naming the reason and ``finish_reason``
``content_filter``; its usage is what Vertex reports (the prompt), else zero.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

from omixa.engine.errors import InvalidRequest, UpstreamError
from omixa.engine.upstream import Usage

# Parameters the engine or OpenAI clients send that mean nothing to Gemini.
DROPPED = frozenset({
    "model", "stream", "stream_options", "user", "metadata", "store", "service_tier",
    "verbosity", "parallel_tool_calls",
})  # fmt: skip
_TRANSLATED = frozenset({
    "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "n",
    "presence_penalty", "frequency_penalty", "seed", "response_format", "reasoning_effort",
})  # fmt: skip
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
MAX_STOP_SEQUENCES = 5

# reasoning_effort -> thinkingConfig, per Gemini family (longest matching model-id prefix).
# Gemini 2.5 takes a token budget: Pro cannot turn thinking off (128..32768), Flash 0..24576,
# Flash-Lite 0 or 512..24576. Gemini 3 takes a level: Pro low/high, Flash minimal..high.
_BUDGET_25 = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}
THINKING: dict[str, dict[str, dict[str, Any]]] = {
    "gemini-2.5-pro": {e: {"thinkingBudget": b} for e, b in {
        **_BUDGET_25, "none": 128, "minimal": 128, "xhigh": 32768}.items()},
    "gemini-2.5-flash": {e: {"thinkingBudget": b} for e, b in _BUDGET_25.items()},
    "gemini-2.5-flash-lite": {e: {"thinkingBudget": b} for e, b in _BUDGET_25.items()},
    "gemini-3-pro": {e: {"thinkingLevel": lv} for e, lv in {
        "none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high",
        "xhigh": "high"}.items()},
    "gemini-3-flash": {e: {"thinkingLevel": lv} for e, lv in {
        "none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium",
        "high": "high", "xhigh": "high"}.items()},
}  # fmt: skip

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}
# Anything else (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, FINISH_REASON_UNSPECIFIED, ...).
DEFAULT_FINISH = "stop"
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)


def thinking_config(model: str, effort: str) -> dict[str, Any]:
    """The ``thinkingConfig`` for ``effort`` on ``model`` (its family by id prefix; an
    unknown Gemini 3 model takes the Gemini 3 Pro levels, any other the 2.5 Flash budgets)."""
    family = max((p for p in THINKING if model.startswith(p)), key=len, default=None)
    if family is None:
        family = "gemini-3-pro" if model.startswith("gemini-3") else "gemini-2.5-flash"
    return dict(THINKING[family][effort])


def check_request(body: dict[str, Any]) -> None:
    """Refuse what cannot go to Gemini. Errors: InvalidRequest naming the field."""
    for key, value in body.items():
        if key in DROPPED or key in _TRANSLATED or value is None:
            continue
        if key in ("logit_bias", "logprobs", "tools", "functions") and not value:
            continue  # empty or false: asks for nothing
        raise InvalidRequest(f"'{key}' is not supported for Vertex Gemini models.", param=key)
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in EFFORTS:
        raise InvalidRequest(f"'reasoning_effort' must be one of {', '.join(EFFORTS)}.", param="reasoning_effort")
    _stop_sequences(body.get("stop"))
    _response_format(body.get("response_format"))
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidRequest(f"'{key}' must be a number.", param=key)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidRequest("'seed' must be an integer.", param="seed")
    _contents(body["messages"])


def to_gemini(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Vertex ``generateContent`` body for an (already checked) OpenAI body."""
    system, contents = _contents(body["messages"])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if cap is not None:
        config["maxOutputTokens"] = cap
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                     ("presence_penalty", "presencePenalty"),
                     ("frequency_penalty", "frequencyPenalty")):  # fmt: skip
        if body.get(src) is not None:
            config[dst] = body[src]
    if (n := body.get("n")) not in (None, 1):
        config["candidateCount"] = n
    if stops := _stop_sequences(body.get("stop")):
        config["stopSequences"] = stops
    config.update(_response_format(body.get("response_format")))
    if body.get("reasoning_effort") is not None:
        config["thinkingConfig"] = thinking_config(model, body["reasoning_effort"])
    if config:
        out["generationConfig"] = config
    return out


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences on Vertex Gemini models.", param="stop"
        )
    return stops


def _response_format(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "'response_format.json_schema.schema' must be an object.", param="response_format.json_schema.schema"
            )
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise InvalidRequest(
        "'response_format.type' must be text, json_object or json_schema.", param="response_format.type"
    )


def _contents(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents). Errors: InvalidRequest."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise InvalidRequest(
                f"messages[{i}]: tool calls are not supported for Vertex Gemini models.", param=f"messages[{i}]"
            )
        parts = list(_parts(message.get("content"), f"messages[{i}]"))
        if role in ("system", "developer"):
            system.extend(parts)
            continue
        gemini_role = "model" if role == "assistant" else "user"
        if not parts:
            continue  # Gemini refuses a turn without parts
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    if not contents:
        raise InvalidRequest(
            "Vertex Gemini models need at least one user or assistant message with content.", param="messages"
        )
    return system, contents


def _parts(content: Any, where: str) -> Iterable[dict[str, Any]]:
    if isinstance(content, str):
        if content:
            yield {"text": content}
        return
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}.content[{j}].text must be a string.", param=f"{where}.content[{j}].text")
            if text:
                yield {"text": text}
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
            if match is None:
                raise InvalidRequest(
                    f"{where}.content[{j}]: Vertex Gemini models take images only as "
                    "data: URLs (data:image/png;base64,...).",
                    param=f"{where}.content[{j}].image_url",
                )
            yield {"inlineData": {"mimeType": match.group(1), "data": match.group(2)}}
        else:
            raise InvalidRequest(
                f"{where}.content[{j}]: content parts of type {kind!r} are not supported for Vertex Gemini models.",
                param=f"{where}.content[{j}].type",
            )


# -- responses ----------------------------------------------------------------------------
def usage_of(metadata: Any) -> Usage | None:
    """OpenAI usage from ``usageMetadata``; None if missing or malformed."""
    if not isinstance(metadata, dict):
        return None
    thoughts = metadata.get("thoughtsTokenCount") or 0
    return Usage.from_openai({
        "prompt_tokens": metadata.get("promptTokenCount") or 0,
        "completion_tokens": (metadata.get("candidatesTokenCount") or 0) + thoughts,
        "prompt_tokens_details": {"cached_tokens": metadata.get("cachedContentTokenCount") or 0},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    })  # fmt: skip


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def finish_reason(reason: Any) -> str | None:
    if not reason:
        return None
    return FINISH_REASONS.get(reason, DEFAULT_FINISH)


def text_of(candidate: dict[str, Any]) -> str:
    """The answer text of a candidate: its text parts, thought parts left out."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return "".join(
        p["text"] for p in parts or ()
        if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
    )  # fmt: skip


def blocked_refusal(data: dict[str, Any]) -> str | None:
    """The refusal text for a blocked prompt, or None if the prompt was not blocked."""
    feedback = data.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if not reason or data.get("candidates"):
        return None
    detail = feedback.get("blockReasonMessage") if isinstance(feedback, dict) else None
    return f"The prompt was blocked by Vertex ({reason})" + (f": {detail}" if detail else ".")


def check_error(data: dict[str, Any]) -> None:
    """Errors: UpstreamError if ``data`` is an error object rather than a response."""
    error = data.get("error")
    if isinstance(error, dict):
        status = error.get("code") if isinstance(error.get("code"), int) else None
        raise UpstreamError(str(error.get("message") or "Vertex reported an error."), upstream_status=status)


def to_completion(data: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """A ``chat.completion`` for a Vertex response, and its usage.

    Errors: UpstreamError if ``data`` is an error or has neither candidates nor a block.
    """
    check_error(data)
    usage = usage_of(data.get("usageMetadata"))
    refusal = blocked_refusal(data)
    choices = []
    if refusal is not None:
        choices.append(_choice(0, "", "content_filter", refusal))
        usage = usage or Usage()  # nothing reported for a blocked prompt: nothing is charged
    else:
        candidates = data.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            raise UpstreamError("Vertex answered without candidates.", upstream_status=200)
        for i, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                raise UpstreamError("Vertex answered a malformed candidate.", upstream_status=200)
            index = candidate.get("index", i)
            reason = finish_reason(candidate.get("finishReason")) or DEFAULT_FINISH
            choices.append(_choice(index, text_of(candidate), reason, None))
    body = {
        "id": _completion_id(data),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = openai_usage(usage)
    return body, usage


def _choice(index: int, text: str, reason: str, refusal: str | None) -> dict[str, Any]:
    message = {"role": "assistant", "content": text, "refusal": refusal}
    return {"index": index, "message": message, "finish_reason": reason, "logprobs": None}


def _completion_id(data: dict[str, Any]) -> str:
    response_id = data.get("responseId")
    return f"chatcmpl-{response_id}" if isinstance(response_id, str) and response_id else (
        f"chatcmpl-vertex{time.time_ns():x}")  # fmt: skip


class ChunkEncoder:
    """Turns Vertex stream events into ``chat.completion.chunk`` SSE frames (bytes).

    Feed each event's JSON to :meth:`feed`; call :meth:`finish` when the upstream stream
    ended, for the usage frame (when ``include_usage``) and ``data: [DONE]``.
    """

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage
        self._id: str | None = None
        self._created = int(time.time())
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self.usage: Usage | None = None

    @property
    def finished(self) -> bool:
        """Whether some choice got its finish frame (a complete answer)."""
        return bool(self._finished)

    def feed(self, data: dict[str, Any]) -> list[tuple[bytes, dict[str, Any]]]:
        """(raw frame, its JSON) pairs for one Vertex event. Errors: UpstreamError."""
        check_error(data)
        if self._id is None:
            self._id = _completion_id(data)
        usage = usage_of(data.get("usageMetadata"))
        if usage is not None:
            self.usage = usage  # the last event's is the total
        refusal = blocked_refusal(data)
        if refusal is not None:
            self.usage = self.usage or Usage()  # as in to_completion
            return [*self._start(0), self._frame(0, {"content": "", "refusal": refusal}, None),
                    self._frame(0, {}, "content_filter", finish=True)]  # fmt: skip
        frames = []
        for i, candidate in enumerate(data.get("candidates") or ()):
            if not isinstance(candidate, dict):
                raise UpstreamError("malformed Vertex stream event")
            index = candidate.get("index", i)
            frames.extend(self._start(index))
            text = text_of(candidate)
            if text:
                frames.append(self._frame(index, {"content": text}, None))
            reason = finish_reason(candidate.get("finishReason"))
            if reason is not None and index not in self._finished:
                frames.append(self._frame(index, {}, reason, finish=True))
        return frames

    def finish(self) -> list[tuple[bytes, dict[str, Any] | None]]:
        """The closing frames: usage (when asked and known), then ``[DONE]``."""
        frames: list[tuple[bytes, dict[str, Any] | None]] = []
        if self._include_usage and self.usage is not None:
            frames.append(self._encode({**self._head(), "choices": [], "usage": openai_usage(self.usage)}))
        frames.append((b"data: [DONE]\n\n", None))
        return frames

    def _start(self, index: int) -> list[tuple[bytes, dict[str, Any]]]:
        if index in self._started:
            return []
        self._started.add(index)
        return [self._frame(index, {"role": "assistant", "content": ""}, None)]

    def _frame(self, index: int, delta: dict[str, Any], reason: str | None, *, finish: bool = False):
        if finish:
            self._finished.add(index)
        choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        return self._encode({**self._head(), "choices": [choice]})

    def _head(self) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model}  # fmt: skip

    @staticmethod
    def _encode(data: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n", data
