"""Checking a chat-completions request and preparing what is sent upstream.

Everything a client can get wrong is found here, before anything is held or sent:
a clear ``invalid_request`` (400) or ``model_not_found`` (404) and no side effect.
"""

from __future__ import annotations

import copy
from typing import Any, Collection

import attrs

from engine.catalog import Catalog, ModelInfo
from engine.errors import InvalidRequest, ModelNotFound
from engine.providers import gemini
from engine.tokens import count_chat_prompt

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_CHOICES = 16


@attrs.frozen(kw_only=True)
class ChatRequest:
    """A checked request. ``output_tokens`` is the cap per choice the hold must cover;
    ``cap_is_clients`` says whether the client chose it (then it is never lowered)."""

    model: ModelInfo
    body: dict[str, Any]
    stream: bool
    include_usage: bool  # the client asked for the usage frame
    prompt_tokens: int
    output_tokens: int
    cap_is_clients: bool
    choices: int

    @property
    def estimated_tokens(self) -> int:
        """The most tokens the call can use (prompt + every output token of the cap), as
        rate limits count it before the call."""
        return self.prompt_tokens + self.output_tokens * self.choices


def _positive_int(body: dict[str, Any], key: str, *, maximum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{key}' must be a positive integer.")
    if maximum is not None and value > maximum:
        raise InvalidRequest(f"'{key}' must be at most {maximum}.")
    return value


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}; got {role!r}."
            )
        content = message.get("content")
        if content is None:
            if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
                continue
            raise InvalidRequest(f"messages[{i}].content is required.")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
        ):
            raise InvalidRequest(
                f"messages[{i}].content must be a string or an array of content parts with a 'type'."
            )


def parse_chat_request(body: Any, catalog: Catalog, enabled: Collection[str]) -> ChatRequest:
    """Check ``body`` and work out the hold's token counts.

    Errors: InvalidRequest, ModelNotFound.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidRequest("'model' is required and must be a string.")
    model = catalog.get(model_id)
    if model is None or model_id not in enabled:
        raise ModelNotFound(f"The model '{model_id}' does not exist or is not enabled.")
    if model.modality != "chat":
        raise InvalidRequest(
            f"The model '{model_id}' is an {model.modality} model; use its own endpoint."
        )
    _check_messages(body.get("messages"))
    if model.provider == "vertex":
        gemini.check_request(body)  # what Gemini cannot take is refused before any hold
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false.")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.")
    if options is not None and not stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.")
    choices = _positive_int(body, "n", maximum=MAX_CHOICES) or 1
    completion_cap = _positive_int(body, "max_completion_tokens")
    legacy_cap = _positive_int(body, "max_tokens")
    cap = completion_cap if completion_cap is not None else legacy_cap
    if cap is not None and cap > model.max_output_tokens:
        key = "max_completion_tokens" if completion_cap is not None else "max_tokens"
        raise InvalidRequest(
            f"'{key}' is too large: {cap}. '{model_id}' supports at most "
            f"{model.max_output_tokens} output tokens."
        )

    prompt_tokens = count_chat_prompt(body, model.encoding, image_tokens=model.image_tokens)
    room = model.context_window - prompt_tokens
    if room < 1:
        raise InvalidRequest(
            f"The prompt is about {prompt_tokens} tokens; '{model_id}' accepts at most "
            f"{model.context_window} tokens of context."
        )
    cap_is_clients = cap is not None
    if cap is None:
        cap = min(model.max_output_tokens, room)
    return ChatRequest(
        model=model,
        body=body,
        stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        prompt_tokens=prompt_tokens,
        output_tokens=cap,
        cap_is_clients=cap_is_clients,
        choices=choices,
    )


def upstream_body(request: ChatRequest, output_tokens: int) -> dict[str, Any]:
    """The body sent upstream: the client's, with the output cap the hold covers made
    explicit (so the upstream can never produce more than was reserved) and, for streams,
    the usage frame always requested (the relay drops it unless the client asked)."""
    body = copy.copy(request.body)
    # Exactly one cap key goes upstream, so no other cap can let the answer outgrow the hold.
    if request.model.reasoning or "max_completion_tokens" in body:
        # Reasoning models refuse max_tokens; their cap also bounds the reasoning tokens.
        body.pop("max_tokens", None)
        body["max_completion_tokens"] = output_tokens
    else:
        body["max_tokens"] = output_tokens
    if request.stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body
