"""The Responses API on an upstream that speaks chat completions (Vertex Gemini through its
chat translation, the simulator): a Responses body becomes a chat body, the chat answer a
response object, and a chat stream Azure's typed Responses events.

What translates: ``instructions`` (a system message); ``input`` as a string or message items
(roles user, assistant, system, developer; text, ``input_text``, ``output_text`` and
``input_image`` parts with an ``image_url``), ``function_call`` and ``function_call_output``
items (``reasoning`` items are dropped: they belong to the model that made them);
``function`` tools and ``tool_choice``; ``text.format`` (``json_object``, ``json_schema``);
``max_output_tokens``; ``reasoning.effort``; ``temperature``, ``top_p``, ``parallel_tool_calls``,
``user``. What does not (refused by :func:`check` with a 400 naming the field):
``previous_response_id`` and items by reference (such an upstream stores nothing), other
item and part types, ``custom`` tools, files; on Vertex, whose chat translation takes no
tools, function tools and function-call items too.

On Vertex the response object says ``"store": false``: nothing is kept upstream to continue
or fetch (the simulator keeps its own: :mod:`engine.providers.sim_responses`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs

from omixa.engine.errors import InvalidRequest, UpstreamError
from omixa.engine.upstream import Completion, SseEvent, Usage

ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
# Passed from the Responses body to the chat body as they are.
SAME_FIELDS = ("temperature", "top_p", "parallel_tool_calls", "user", "metadata", "service_tier")


def check(body: dict[str, Any], *, stored_history: bool = False, tools: bool = True) -> None:
    """Refuse what has no chat translation (see the module docstring). ``stored_history``:
    the adapter keeps its own responses, so ``previous_response_id`` is taken; ``tools``
    False: the upstream's chat translation takes no tools (Vertex's), so function tools and
    function-call items are refused too.

    Errors: InvalidRequest naming the field."""
    if body.get("previous_response_id") is not None and not stored_history:
        raise InvalidRequest(
            "This model does not keep responses: send the whole conversation as input items instead of "
            "'previous_response_id'.",
            param="previous_response_id",
        )
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ROLES:
                raise InvalidRequest(
                    f"input[{i}].role must be one of {', '.join(sorted(ROLES))}.", param=f"input[{i}].role"
                )
            for j, part in enumerate(item["content"] if isinstance(item["content"], list) else ()):
                if part["type"] in TEXT_PARTS and isinstance(part.get("text"), str):
                    continue
                if part["type"] == "input_image" and isinstance(part.get("image_url"), str):
                    continue
                raise InvalidRequest(
                    f"input[{i}].content[{j}]: only text and image_url parts can be sent to this model.",
                    param=f"input[{i}].content[{j}].type",
                )
        elif kind not in (("function_call", "function_call_output", "reasoning") if tools else ("reasoning",)):
            raise InvalidRequest(f"input[{i}]: '{kind}' items cannot be sent to this model.", param=f"input[{i}].type")
    for i, tool in enumerate(body.get("tools") or ()):
        if not tools:
            raise InvalidRequest("This model takes no tools here.", param="tools")
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise InvalidRequest(
                f"tools[{i}]: only function tools with a name can be sent to this model.", param=f"tools[{i}]"
            )
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text", "json_object", "json_schema"):
        raise InvalidRequest("text.format: only text, json_object and json_schema are supported.", param="text.format")


def _content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "input_image":
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            parts.append({"type": "text", "text": part["text"]})
    return parts


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of a (checked) Responses body's instructions and input."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _content(item["content"])})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}  # fmt: skip
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
    return messages


def chat_body(body: dict[str, Any], history: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """The chat-completions body of a checked Responses body (``history``: earlier messages
    of a stored conversation, put before its input)."""
    chat: dict[str, Any] = {"model": body.get("model"), "messages": [*history, *messages_of(body)]}
    for key in SAME_FIELDS:
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    tools = [
        {"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}}
        for t in body.get("tools") or ()
    ]
    if tools:
        chat["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    return chat


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def response_shell(body: dict[str, Any], response_id: str, model: str, *, store: bool) -> dict[str, Any]:
    """A response object without output, status ``in_progress`` (``response.created``'s)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": store,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}  # fmt: skip


def finished(
    shell: dict[str, Any], output: list[dict[str, Any]], finish: str | None, usage: Usage | None
) -> dict[str, Any]:
    """The shell completed with ``output``: ``incomplete`` when the cap cut it."""
    cut = finish == "length"
    return {
        **shell,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": output,
        "usage": _usage(usage),
    }


def response_of(chat: dict[str, Any], usage: Usage | None, shell: dict[str, Any]) -> dict[str, Any]:
    """The response object of a ``chat.completion`` answer (its first choice)."""
    choices = chat.get("choices") or [{}]
    message = choices[0].get("message") or {}
    output: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        output.append(_message_item("msg_" + secrets.token_hex(16), message["content"], "completed"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(
            _call_item(
                "fc_" + secrets.token_hex(16),
                str(call.get("id")),
                str(function.get("name")),
                str(function.get("arguments") or ""),
                "completed",
            )  # fmt: skip
        )
    return finished(shell, output, choices[0].get("finish_reason"), usage)


def completion_as_response(completion: Completion, shell: dict[str, Any]) -> Completion:
    return Completion(body=response_of(completion.body, completion.usage, shell), usage=completion.usage)


def _event(kind: str, sequence: int, **fields: Any) -> SseEvent:
    data = {"type": kind, "sequence_number": sequence, **fields}
    raw = b"event: " + kind.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    return SseEvent(raw=raw, data=data)


@attrs.define
class _Call:
    """A function call item being streamed."""

    item_id: str
    index: int  # its place in the output
    call_id: str
    name: str
    arguments: str = ""

    def item(self, status: str) -> dict[str, Any]:
        return _call_item(self.item_id, self.call_id, self.name, self.arguments, status)


class ResponseEvents:
    """Azure's Responses events, made from a chat stream's chunks (which must include the
    usage frame). ``on_done`` gets the finished response object."""

    def __init__(self, chunks: AsyncIterator[SseEvent], shell: dict[str, Any], on_done: Any = None) -> None:
        self._chunks = chunks
        self._shell = shell
        self._on_done = on_done
        self._sequence = 0
        self._pending: list[SseEvent] = []
        self._text: list[str] = []
        self._message: tuple[str, int] | None = None  # item id, output index
        self._calls: dict[int, _Call] = {}  # by the chat stream's tool-call index
        self._items = 0
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._ended = False
        self._emit("response.created", response=shell)
        self._emit("response.in_progress", response=shell)

    def _emit(self, kind: str, **fields: Any) -> None:
        self._pending.append(_event(kind, self._sequence, **fields))
        self._sequence += 1

    def __aiter__(self) -> ResponseEvents:
        return self

    async def __anext__(self) -> SseEvent:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                raise UpstreamError("The upstream stream ended unexpectedly.") from None
            self._read(chunk)
        return self._pending.pop(0)

    def _read(self, chunk: SseEvent) -> None:
        if chunk.done:
            self._end()
            return
        data = chunk.data
        if data is None:
            return
        if "error" in data and not data.get("choices"):
            error = data["error"] if isinstance(data["error"], dict) else {}
            raise UpstreamError(str(error.get("message") or "The upstream reported an error."))
        if data.get("usage"):
            self._usage = Usage.from_openai(data["usage"]) or self._usage
        for choice in data.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            self._finish = choice.get("finish_reason") or self._finish
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or ():
                self._call_delta(call)

    def _text_delta(self, text: str) -> None:
        if self._message is None:
            self._message = ("msg_" + secrets.token_hex(16), self._items)
            self._items += 1
            item_id, index = self._message
            self._emit(
                "response.output_item.added",
                output_index=index,
                item={**_message_item(item_id, "", "in_progress"), "content": []},
            )
            self._emit("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                       part={"type": "output_text", "text": "", "annotations": []})  # fmt: skip
        item_id, index = self._message
        self._text.append(text)
        self._emit(
            "response.output_text.delta", item_id=item_id, output_index=index, content_index=0, delta=text, logprobs=[]
        )

    def _call_delta(self, call: dict[str, Any]) -> None:
        at = call.get("index", 0)
        function = call.get("function") or {}
        state = self._calls.get(at)
        if state is None:
            state = _Call(
                item_id="fc_" + secrets.token_hex(16),
                index=self._items,
                call_id=str(call.get("id")),
                name=str(function.get("name") or ""),
            )
            self._calls[at] = state
            self._items += 1
            self._emit("response.output_item.added", output_index=state.index, item=state.item("in_progress"))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            state.arguments += arguments
            self._emit(
                "response.function_call_arguments.delta",
                item_id=state.item_id,
                output_index=state.index,
                delta=arguments,
            )

    def _end(self) -> None:
        output: list[tuple[int, dict[str, Any]]] = []
        if self._message is not None:
            item_id, index = self._message
            text = "".join(self._text)
            item = _message_item(item_id, text, "completed")
            self._emit(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            self._emit(
                "response.content_part.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=item["content"][0],
            )
            self._emit("response.output_item.done", output_index=index, item=item)
            output.append((index, item))
        for call in self._calls.values():
            item = call.item("completed")
            self._emit(
                "response.function_call_arguments.done",
                item_id=call.item_id,
                output_index=call.index,
                arguments=call.arguments,
            )
            self._emit("response.output_item.done", output_index=call.index, item=item)
            output.append((call.index, item))
        response = finished(
            self._shell, [item for _, item in sorted(output, key=lambda pair: pair[0])], self._finish, self._usage
        )
        if self._on_done is not None:
            self._on_done(response)
        self._emit(
            "response.completed" if response["status"] == "completed" else "response.incomplete", response=response
        )
        self._ended = True
