"""Checking a chat-completions request and preparing what is sent upstream.

Everything a client can get wrong is found here, before anything is held or sent:
a clear ``invalid_request`` (400) or ``model_not_found`` (404) and no side effect.

What is sent upstream is normalised per model family, from the catalog (never from the
deployment's name): ``reasoning_effort`` is mapped to the nearest effort the model supports
(removed for models without reasoning), ``verbosity`` is kept only where the model takes it,
Azure reasoning models lose the sampling parameters Azure rejects for them
(:data:`REASONING_DROPS`), and ``service_tier`` is decided per deployment
(:meth:`ChatRequest.for_deployment`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from typing import Any, ClassVar

import attrs

from omixa.engine.catalog import EFFORTS, Catalog, ModelInfo
from omixa.engine.config import DeploymentConfig, StreamingConfig
from omixa.engine.errors import InvalidRequest, ModelNotFound
from omixa.engine.model_call import StoredAnswer, TieredCall
from omixa.engine.relay import OpenedStream, open_events
from omixa.engine.stream_frames import ChatFrames, function_text
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import CallIds, Completion, Provider, Usage

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_CHOICES = 16
VERBOSITIES = ("low", "medium", "high")
# "flex" and "scale" are OpenAI's tiers, which Azure does not have: taken, and served (and
# billed) as "default", so that clients written for OpenAI work unchanged.
SERVICE_TIERS = ("auto", "default", "priority", "flex", "scale")
# Parameters Azure refuses for reasoning models; Omixa drops them (many SDKs and frameworks
# send a temperature by default, and the request still makes sense without it).
REASONING_DROPS = (
    "temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs",
    "top_logprobs", "logit_bias",
)  # fmt: skip


@attrs.frozen(kw_only=True)
class ChatRequest(TieredCall):
    """A checked request. ``output_tokens`` is the cap per choice the hold must cover;
    ``cap_is_clients`` says whether the client chose it (then it is never lowered)."""

    api: ClassVar[str] = "chat"

    model: ModelInfo
    body: dict[str, Any]
    stream: bool
    include_usage: bool  # the client asked for the usage frame
    prompt_tokens: int
    output_tokens: int
    cap_is_clients: bool
    choices: int
    # The client asked for service_tier "priority" and a priority deployment may serve it:
    # the hold is at priority prices and priority deployments are tried first.
    priority: bool = False

    hold_amount = None  # the hold follows the cap (see engine.wallet)

    @property
    def estimated_tokens(self) -> int:
        """The most tokens the call can use (prompt + every output token of the cap), as
        rate limits count it before the call."""
        return self.prompt_tokens + self.output_tokens * self.choices

    def build_body(self, output_tokens: int) -> dict[str, Any]:
        return upstream_body(self, output_tokens)

    def allows(self, deployment: DeploymentConfig) -> bool:
        return True

    async def send(self, provider: Provider, body: dict[str, Any], ids: CallIds) -> Completion:
        return await provider.complete(body, ids)

    def usage_of(self, completion: Completion) -> Usage:
        """The answer's usage; without one, the prompt as counted here plus the tokens of the
        answer's text and tool calls."""
        if completion.usage is not None:
            return completion.usage
        text = _answer_text(completion.body)
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=count_text(text, self.model.encoding))

    def stored_answer(self, answer: dict[str, Any]) -> StoredAnswer | None:
        return None  # chat completions are not stored upstream

    def frames(self, streaming: StreamingConfig) -> ChatFrames:
        """The reader of this request's stream."""
        return ChatFrames(include_usage=self.include_usage, keep_filter_frames=streaming.keep_filter_frames)

    @staticmethod
    async def open(provider: Provider, body: dict[str, Any], ids: CallIds) -> OpenedStream:
        """Open the stream on ``provider``."""
        return await open_events(provider.open_stream(body, ids))


def _positive_int(body: dict[str, Any], key: str, *, maximum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{key}' must be a positive integer.", param=key)
    if maximum is not None and value > maximum:
        raise InvalidRequest(f"'{key}' must be at most {maximum}.", param=key)
    return value


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of message objects.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}; got {role!r}.",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is None:
            if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
                continue
            raise InvalidRequest(f"messages[{i}].content is required.", param=f"messages[{i}].content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
        ):
            raise InvalidRequest(
                f"messages[{i}].content must be a string or an array of content parts with a 'type'.",
                param=f"messages[{i}].content",
            )


_ENDPOINTS = {"chat": "/chat/completions", "embedding": "/embeddings", "image": "/images/generations"}


def resolve_model(body: Any, catalog: Catalog, enabled: Collection[str], modality: str) -> ModelInfo:
    """The catalog model a request body names, served here and of ``modality``.

    Errors: InvalidRequest (not an object, no model, another modality), ModelNotFound.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    model = catalog.get(model_id)
    if model is None or model_id not in enabled:
        raise ModelNotFound(f"The model '{model_id}' does not exist or is not enabled.")
    if model.modality != modality:
        article = "an" if model.modality[0] in "aeiou" else "a"
        raise InvalidRequest(
            f"The model '{model_id}' is {article} {model.modality} model; use {_ENDPOINTS[model.modality]}.",
            param="model",
        )
    return model


def _choice(body: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = body.get(key)
    if value is not None and value not in allowed:
        raise InvalidRequest(f"'{key}' must be one of {', '.join(allowed)}; got {value!r}.", param=key)
    return value


def parse_chat_request(
    body: Any,
    catalog: Catalog,
    enabled: Collection[str],
    priority_models: Collection[str] = (),
    provider_check: Callable[[str, dict[str, Any]], None] | None = None,
) -> ChatRequest:
    """Check ``body`` and work out the hold's token counts.

    ``priority_models``: catalog ids with an enabled deployment that has priority processing.
    ``provider_check(provider, body)``: the adapters' own refusals for the model's provider
    (:func:`engine.providers.check_request`: what Vertex Gemini cannot take), before any hold.
    Errors: InvalidRequest, ModelNotFound.
    """
    model = resolve_model(body, catalog, enabled, "chat")
    model_id = model.id
    _check_messages(body.get("messages"))
    _choice(body, "reasoning_effort", EFFORTS)
    _choice(body, "verbosity", VERBOSITIES)
    tier = _choice(body, "service_tier", SERVICE_TIERS)
    if provider_check is not None:
        provider_check(model.provider, body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    if options is not None and not stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    choices = _positive_int(body, "n", maximum=MAX_CHOICES) or 1
    completion_cap = _positive_int(body, "max_completion_tokens")
    legacy_cap = _positive_int(body, "max_tokens")
    cap = completion_cap if completion_cap is not None else legacy_cap
    if cap is not None and cap > model.max_output_tokens:
        key = "max_completion_tokens" if completion_cap is not None else "max_tokens"
        raise InvalidRequest(
            f"'{key}' is too large: {cap}. '{model_id}' supports at most {model.max_output_tokens} output tokens.",
            param=key,
        )

    prompt_tokens = count_chat_prompt(body, model.encoding, image_tokens=model.image_tokens)
    room = model.context_window - prompt_tokens
    if room < 1:
        raise InvalidRequest(
            f"The prompt is about {prompt_tokens} tokens; '{model_id}' accepts at most "
            f"{model.context_window} tokens of context.",
            param="messages",
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
        priority=tier == "priority" and model.priority_prices is not None and model_id in priority_models,
    )


def upstream_body(request: ChatRequest, output_tokens: int) -> dict[str, Any]:
    """The body sent upstream: the client's, with the output cap the hold covers made
    explicit (so the upstream can never produce more than was reserved) and, for streams,
    the usage frame always requested (the relay drops it unless the client asked)."""
    body = normalise(request.body, request.model)
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


def takes_sampling(model: ModelInfo) -> bool:
    """Whether ``model`` is sent ``temperature`` and the other :data:`REASONING_DROPS`
    (Azure's reasoning models refuse them, so ``normalise`` drops them there)."""
    return not (model.reasoning and model.provider == "azure")


def normalise(body: dict[str, Any], model: ModelInfo) -> dict[str, Any]:
    """A copy of a checked ``body`` fitted to ``model``'s family (see the module docstring).

    ``service_tier`` is removed here and set per deployment by ``for_deployment``.
    """
    body = copy.copy(body)
    effort = body.pop("reasoning_effort", None)
    if effort is not None and (mapped := model.effort_for(effort)) is not None:
        body["reasoning_effort"] = mapped
    if not model.verbosity or body.get("verbosity") is None:
        body.pop("verbosity", None)
    if not takes_sampling(model):
        for key in REASONING_DROPS:
            body.pop(key, None)
    body.pop("service_tier", None)
    return body


def _answer_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for choice in body.get("choices") or ():
        message = (choice.get("message") if isinstance(choice, dict) else None) or {}
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        for call in message.get("tool_calls") or ():
            parts.append(function_text(call.get("function") if isinstance(call, dict) else None))
        parts.append(function_text(message.get("function_call")))  # the legacy functions
    return "".join(parts)
