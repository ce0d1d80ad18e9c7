"""Checking a Responses API request (``POST /api/v1/responses``) and preparing what is sent
upstream.

Like chat (:mod:`engine.chat_request`), everything a client can get wrong is found before
anything is held or sent, and the body is fitted to the model's family from the catalog:
``reasoning.effort`` mapped to the nearest effort the model supports (``reasoning`` removed
for models without reasoning), ``text.verbosity`` kept only where the model takes it, Azure
reasoning models lose the sampling parameters Azure rejects, and ``service_tier`` is decided
per deployment.

Refused with a 400, because they would reach what belongs to the operator's Azure resource
rather than the client, or cost what Omixa does not price: built-in tools (web and file
search, code interpreter, image generation, MCP, computer use: only ``function`` and
``custom`` tools are taken), ``background`` responses, ``conversation``, stored ``prompt``
templates, ``item_reference`` input items and files or images given by ``file_id``.

The hold covers the input as counted offline (instructions, input items, tools) plus, for a
follow-up (``previous_response_id``), the context the stored response carries (its input
plus its output tokens, recorded when it was made), and the output cap
(``max_output_tokens``, which for reasoning models bounds the reasoning tokens too).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

import attrs

from omixa.engine.catalog import EFFORTS, Catalog, ModelInfo
from omixa.engine.chat_request import REASONING_DROPS, SERVICE_TIERS, VERBOSITIES, resolve_model
from omixa.engine.config import DeploymentConfig, StreamingConfig
from omixa.engine.errors import InvalidRequest, UpstreamError
from omixa.engine.model_call import StoredAnswer, TieredCall
from omixa.engine.relay import OpenedStream, open_events
from omixa.engine.stored_responses import same_resource
from omixa.engine.stream_frames import ResponseFrames
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import CallIds, Completion, Provider, ResponsesProvider, Usage
from omixa.storage import StoredResponse

# Adapters that serve the Responses API (Vertex and the simulator through their chat translation).
RESPONSES_PROVIDERS = ("azure", "vertex", "simulator")
TOOL_TYPES = ("function", "custom")
# Fields that reach the operator's resource or run work Omixa cannot bill.
REFUSED = {
    "background": "Background responses are not supported; stream the response instead.",
    "conversation": "Conversations are not supported; chain responses with 'previous_response_id'.",
    "prompt": "Stored prompt templates are not supported; send the instructions and input.",
}


@attrs.frozen(kw_only=True)
class ResponsesRequest(TieredCall):
    """A checked Responses API request (see :class:`engine.model_call.ModelCall`)."""

    api: ClassVar[str] = "responses"

    model: ModelInfo
    body: dict[str, Any]
    stream: bool
    store: bool
    prompt_tokens: int
    output_tokens: int
    cap_is_clients: bool
    priority: bool = False
    previous_response_id: str | None = None
    # Ids of stored items the input names (item_reference, reasoning by id).
    references: tuple[str, ...] = ()
    # The resource that stores the previous response and the items: only its deployments
    # may take the request.
    endpoint: str | None = None

    choices = 1
    hold_amount = None  # the hold follows the cap

    @property
    def estimated_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def continuing(self, previous: StoredResponse | None, referenced: Sequence[StoredResponse]) -> ResponsesRequest:
        """This request with the stored state it names: ``previous`` (its
        ``previous_response_id``) and the stored responses of the items it names by
        reference. It is routed to the resource that stores them, and held for the context
        they carry: the previous response's whole context, and for each other response an
        item is taken from, at most that response's output.

        Errors: InvalidRequest (they live on different resources; the context no longer
        fits the model)."""
        stored = [*([previous] if previous is not None else []), *referenced]
        if any(not same_resource(response.endpoint, stored[0].endpoint) for response in stored[1:]):
            raise InvalidRequest(
                "The previous response and the items given by reference are stored in different places; "
                "send the items' content instead.",
                param="input" if previous is None else "previous_response_id",
            )
        extra = previous.context_tokens if previous is not None else 0
        others = {r.id: r.output_tokens for r in referenced if previous is None or r.id != previous.id}
        prompt = self.prompt_tokens + extra + sum(others.values())
        room = self.model.context_window - prompt
        if room < 1 or (self.cap_is_clients and self.output_tokens > room):
            raise InvalidRequest(
                f"With the stored context the input is about {prompt} tokens; '{self.model.id}' accepts at most "
                f"{self.model.context_window} tokens of context.",
                param="previous_response_id" if previous is not None else "input",
            )
        cap = self.output_tokens if self.cap_is_clients else min(self.output_tokens, room)
        return attrs.evolve(self, prompt_tokens=prompt, output_tokens=cap, endpoint=stored[0].endpoint)

    def build_body(self, output_tokens: int) -> dict[str, Any]:
        """The body sent upstream: fitted to the model's family, with the output cap the
        hold covers made explicit."""
        body = copy.copy(self.body)
        model = self.model
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict):
            if not model.reasoning:
                body.pop("reasoning")
            elif "effort" in reasoning:
                effort = model.effort_for(reasoning["effort"]) if reasoning["effort"] is not None else None
                body["reasoning"] = {k: v for k, v in reasoning.items() if k != "effort"}
                if effort is not None:
                    body["reasoning"]["effort"] = effort
        text = body.get("text")
        if isinstance(text, dict) and "verbosity" in text and not model.verbosity:
            body["text"] = {k: v for k, v in text.items() if k != "verbosity"}
            if not body["text"]:
                del body["text"]
        if model.reasoning and model.provider == "azure":
            for key in REASONING_DROPS:
                body.pop(key, None)
        body.pop("service_tier", None)
        body["max_output_tokens"] = output_tokens
        return body

    def allows(self, deployment: DeploymentConfig) -> bool:
        """Deployments whose adapter serves the Responses API; for a follow-up, only those on
        the resource that stores the previous response."""
        if deployment.provider not in RESPONSES_PROVIDERS:
            return False
        return self.endpoint is None or same_resource(deployment.endpoint, self.endpoint)

    async def send(self, provider: Provider, body: dict[str, Any], ids: CallIds) -> Completion:
        return await _responses(provider).respond(body, ids)

    async def open(self, provider: Provider, body: dict[str, Any], ids: CallIds) -> OpenedStream:
        return await open_events(_responses(provider).open_response_stream(body, ids))

    def frames(self, streaming: StreamingConfig) -> ResponseFrames:
        return ResponseFrames(store=self.store)

    def usage_of(self, completion: Completion) -> Usage:
        """The response's usage; without one, the input as counted here plus the tokens of
        its output text and tool calls."""
        if completion.usage is not None:
            return completion.usage
        text = output_text(completion.body)
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=count_text(text, self.model.encoding))

    def stored_answer(self, answer: dict[str, Any]) -> StoredAnswer | None:
        """The response's id and its output items' ids, when the upstream says it stored it
        (Vertex keeps nothing)."""
        answer_id = answer.get("id")
        if not (self.store and answer.get("store") is not False and isinstance(answer_id, str)):
            return None
        items = [item.get("id") for item in answer.get("output") or () if isinstance(item, dict)]
        return StoredAnswer(answer_id, tuple(i for i in items if isinstance(i, str)))


def _responses(provider: Provider) -> ResponsesProvider:
    if not isinstance(provider, ResponsesProvider):
        # The router only grants deployments the request allows; this is a wiring error.
        raise UpstreamError(f"The {provider.name} adapter does not serve the Responses API.")
    return provider


def output_text(response: dict[str, Any]) -> str:
    """The text a response object carries: its messages' text and refusals, and its tool
    calls' names and arguments."""
    parts: list[str] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        for part in item.get("content") or ():
            if isinstance(part, dict):
                for key in ("text", "refusal"):
                    if isinstance(part.get(key), str):
                        parts.append(part[key])
        for key in ("name", "arguments", "input"):
            if isinstance(item.get(key), str):
                parts.append(item[key])
    return "".join(parts)


# Input item types that carry their content (or, for a reasoning item without its
# encrypted_content and an item_reference, name an item of a stored response).
ITEM_TYPES = frozenset(
    {"message", "function_call", "function_call_output", "custom_tool_call", "custom_tool_call_output",
     "reasoning", "item_reference"}
)  # fmt: skip


def _check_parts(parts: Any, where: str) -> None:
    """Content parts: each an object with a ``type``; no file or image by ``file_id`` (the
    operator's resource's files), no file by ``file_url`` (its size cannot be held for)."""
    for j, part in enumerate(parts if isinstance(parts, list) else ()):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"{where}[{j}] must be a content part with a 'type'.", param=f"{where}[{j}]")
        if part.get("file_id") is not None:
            raise InvalidRequest(
                "Files and images by 'file_id' are not supported; send them inline (image_url or file_data).",
                param=f"{where}[{j}].file_id",
            )
        if part.get("file_url") is not None:
            raise InvalidRequest(
                "Files by 'file_url' are not supported; send the file's content as 'file_data'.",
                param=f"{where}[{j}].file_url",
            )


def _check_input(items: Any) -> tuple[str, ...]:
    """Check the input; return the ids of the stored items it names (``item_reference``
    items, and reasoning items sent without their ``encrypted_content``)."""
    if isinstance(items, str):
        if not items:
            raise InvalidRequest("'input' must not be empty.", param="input")
        return ()
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'input' must be a string or a non-empty array of input items.", param="input")
    references: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"input[{i}] must be an object.", param=f"input[{i}]")
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise InvalidRequest(f"input[{i}].type must be a string.", param=f"input[{i}].type")
        if kind not in ITEM_TYPES:
            raise InvalidRequest(
                f"input[{i}]: '{kind}' items are not supported (built-in tools are not offered).",
                param=f"input[{i}].type",
            )
        if kind == "item_reference" or (kind == "reasoning" and not item.get("encrypted_content")):
            if not isinstance(item.get("id"), str) or not item["id"]:
                raise InvalidRequest(f"input[{i}].id is required.", param=f"input[{i}].id")
            references.append(item["id"])
        if kind == "message" and not isinstance(item.get("role"), str):
            raise InvalidRequest(f"input[{i}].role is required.", param=f"input[{i}].role")
        content = item.get("content")
        if kind == "message" and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"input[{i}].content must be a string or an array of content parts.", param=f"input[{i}].content"
            )
        _check_parts(content, f"input[{i}].content")
        _check_parts(item.get("output"), f"input[{i}].output")  # a tool's output, as parts
    return tuple(references)


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in TOOL_TYPES:
            raise InvalidRequest(
                f"tools[{i}]: only function and custom tools are supported; got {kind!r}.", param=f"tools[{i}].type"
            )


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{key}' must be an object.", param=key)
    return value


def _one_of(value: Any, allowed: tuple[str, ...], param: str) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidRequest(f"'{param}' must be one of {', '.join(allowed)}; got {value!r}.", param=param)
    return value


def count_input(body: dict[str, Any], model: ModelInfo) -> int:
    """The input tokens of a Responses body, counted offline as chat counts its prompt: the
    instructions as a system message, each input item as a message, the tools and the
    output format."""
    items = body["input"]
    messages: list[Any] = [{"role": "user", "content": items}] if isinstance(items, str) else list(items)
    # A tool's output given as content parts is counted as content (an image at its price).
    messages = [
        {"role": "tool", "content": m["output"]} if isinstance(m, dict) and isinstance(m.get("output"), list) else m
        for m in messages
    ]
    if isinstance(body.get("instructions"), str):
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    chat_like = {
        "messages": messages,
        "tools": body.get("tools"),
        "tool_choice": body.get("tool_choice"),
        "response_format": (body.get("text") or {}).get("format"),
    }
    return count_chat_prompt(chat_like, model.encoding, image_tokens=model.image_tokens)


def parse_responses_request(
    body: Any,
    catalog: Catalog,
    enabled: Collection[str],
    served: Collection[str],
    priority_models: Collection[str] = (),
    provider_check: Callable[[str, dict[str, Any]], None] | None = None,
) -> ResponsesRequest:
    """Check ``body`` and work out the hold's token counts (without the context of a
    previous response: see :meth:`ResponsesRequest.continuing`).

    ``enabled``: catalog ids with an enabled deployment; ``served``: those with one whose
    adapter serves the Responses API. ``provider_check(provider, body)``: the adapters' own
    refusals for the model's provider (:func:`engine.providers.check_responses_request`).
    Errors: InvalidRequest, ModelNotFound.
    """
    model = resolve_model(body, catalog, enabled, "chat")
    if model.id not in served:
        raise InvalidRequest(
            f"The Responses API is not available for '{model.id}' here; use /chat/completions.", param="model"
        )
    for key, message in REFUSED.items():
        if body.get(key) is not None and body[key] is not False:
            raise InvalidRequest(message, param=key)
    references = _check_input(body.get("input"))
    _check_tools(body.get("tools"))
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise InvalidRequest("'instructions' must be a string.", param="instructions")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise InvalidRequest("'previous_response_id' must be a response id.", param="previous_response_id")
    reasoning = _object(body, "reasoning")
    _one_of(reasoning.get("effort"), EFFORTS, "reasoning.effort")
    _one_of(_object(body, "text").get("verbosity"), VERBOSITIES, "text.verbosity")
    tier = _one_of(body.get("service_tier"), SERVICE_TIERS, "service_tier")
    for key in ("stream", "store"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise InvalidRequest(f"'{key}' must be true or false.", param=key)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    if options is not None and not stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    if provider_check is not None:
        provider_check(model.provider, body)
    cap = body.get("max_output_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise InvalidRequest("'max_output_tokens' must be a positive integer.", param="max_output_tokens")
    if cap is not None and cap > model.max_output_tokens:
        raise InvalidRequest(
            f"'max_output_tokens' is too large: {cap}. '{model.id}' supports at most "
            f"{model.max_output_tokens} output tokens.",
            param="max_output_tokens",
        )
    prompt_tokens = count_input(body, model)
    room = model.context_window - prompt_tokens
    if room < 1:
        raise InvalidRequest(
            f"The input is about {prompt_tokens} tokens; '{model.id}' accepts at most "
            f"{model.context_window} tokens of context.",
            param="input",
        )
    return ResponsesRequest(
        model=model,
        body=body,
        stream=stream,
        store=body.get("store") is not False,
        prompt_tokens=prompt_tokens,
        output_tokens=cap if cap is not None else min(model.max_output_tokens, room),
        cap_is_clients=cap is not None,
        priority=tier == "priority" and model.priority_prices is not None and model.id in priority_models,
        previous_response_id=previous,
        references=references,
    )
