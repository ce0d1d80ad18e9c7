"""The simulator's Chat Completions side: what a chat body asks (:func:`chat_ask`) and its
answers framed as Azure frames them (:func:`completion_body`, :func:`stream_frames`).

What is read from the body: ``messages`` (the seed, who spoke last, the last user text),
``tools`` and ``tool_choice`` ("none", "auto", "required", a named function, or
``allowed_tools``), the legacy ``functions`` and ``function_call``, ``response_format``
(``text``, ``json_object``, ``json_schema``), ``n``, ``logprobs`` and ``top_logprobs``, and
the output cap (``max_completion_tokens``, else ``max_tokens``). What Azure refuses with a
400 (a named tool that is not offered, ``top_logprobs`` over 20 or without ``logprobs``) is
refused the same way.

Shapes follow Azure's: a tool call's message has ``content`` null and ``tool_calls``
(finish reason "tool_calls"; "function_call" for the legacy form); its stream opens with a
role frame carrying the call's index, id, type, name and empty arguments, then argument
fragments; ``n`` choices are interleaved frame by frame, each with its ``index``; logprobs
go with the content they describe (a tool call's arguments carry none, as on Azure).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omixa.engine.errors import UpstreamError
from omixa.engine.providers.sim_answers import MAX_TOP_LOGPROBS, Answer, Ask, Tool, logprobs

_OK = {"filtered": False, "severity": "safe"}
CONTENT_FILTER = {"hate": _OK, "self_harm": _OK, "sexual": _OK, "violence": _OK}
PROMPT_FILTER = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            **CONTENT_FILTER,
            "jailbreak": {"filtered": False, "detected": False},
        },
    }
]
FIRST_FRAME = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
               "prompt_filter_results": PROMPT_FILTER}  # fmt: skip


def _refuse(message: str) -> UpstreamError:
    return UpstreamError(message, upstream_status=400)


def output_cap(body: dict[str, Any]) -> int | None:
    """The body's ``max_completion_tokens`` (else ``max_tokens``), when it is an integer."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(0, value)
    return None


def choice_count(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def top_logprobs(body: dict[str, Any]) -> int | None:
    """Alternatives per token when ``logprobs`` is true, else None. Errors: UpstreamError 400."""
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise _refuse(f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}.")
    if body.get("logprobs") is not True:
        if top is not None:
            raise _refuse("'top_logprobs' is only allowed when 'logprobs' is true.")
        return None
    return top or 0


def is_legacy(body: dict[str, Any]) -> bool:
    """Whether the body offers functions the legacy way (``functions``, no ``tools``)."""
    return not body.get("tools") and bool(body.get("functions"))


def chat_ask(body: dict[str, Any], length: int) -> Ask:
    """What ``body`` asks, for :func:`engine.providers.sim_answers.answer`; ``length`` is
    the text answer's length. Errors: UpstreamError 400 for what Azure refuses."""
    messages = body.get("messages") or []
    seed_text = json.dumps(messages, sort_keys=True, separators=(",", ":"))
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    output, schema = "text", None
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        output = response_format["type"]
        if output == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            schema = schema if isinstance(schema, dict) else {"type": "object"}
    tools, choice, forced = _tools(body)
    return Ask(
        seed=hashlib.sha256(seed_text.encode()).digest(),
        length=length,
        cap=output_cap(body),
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        user_last=last.get("role") == "user",
        prompt_text=_last_user_text(messages),
        output=output,
        schema=schema,
    )


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str, str | None]:
    """The callable functions, the tool choice's mode and the function it forces."""
    offered: list[Any]
    if is_legacy(body):
        offered = _list(body["functions"])
        choice: Any = body.get("function_call")
        if isinstance(choice, dict):
            choice = {"type": "function", "function": choice}
    else:
        offered = [_dict(t).get("function") for t in _list(body.get("tools")) if _dict(t).get("type") == "function"]
        choice = body.get("tool_choice")
    tools = tuple(Tool(name=f["name"], parameters=f.get("parameters"))
                  for f in offered if isinstance(f, dict) and isinstance(f.get("name"), str))  # fmt: skip
    if choice is None:
        return tools, "auto" if tools else "none", None
    if choice in ("none", "auto", "required"):
        if choice != "none" and not body.get("tools") and not body.get("functions"):
            raise _refuse(f"'tool_choice' is {choice!r} but no tools are given.")
        return tools, choice, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = _dict(choice.get("function")).get("name")
        if not isinstance(name, str) or name not in {t.name for t in tools}:
            raise _refuse(f"'tool_choice' names the function {name!r}, which 'tools' does not offer.")
        return tools, "required", name
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = _dict(choice.get("allowed_tools"))
        names = [_dict(_dict(t).get("function")).get("name") for t in _list(allowed.get("tools"))]
        mode = "required" if allowed.get("mode") == "required" else "auto"
        return tuple(t for t in tools if t.name in names), mode, None
    return (), "none", None  # a custom tool: nothing the simulator can call


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


def finish_reason(answer: Answer, legacy: bool) -> str:
    if not answer.complete:
        return "length"
    if answer.tool_call is not None:
        return "function_call" if legacy else "tool_calls"
    return "stop"


def _logprobs(answer: Answer, top: int | None) -> dict[str, Any] | None:
    if top is None:
        return None
    if answer.tool_call is not None:
        return {"content": None, "refusal": None}
    return {"content": logprobs(answer, top), "refusal": None}


def completion_body(answers: list[Answer], head: dict[str, Any], usage: dict[str, Any], *,
                    legacy: bool, top: int | None) -> dict[str, Any]:  # fmt: skip
    """A ``chat.completion`` object of ``answers`` (``head``: id, created, model...)."""
    choices = []
    for index, answer in enumerate(answers):
        message: dict[str, Any] = {"annotations": [], "content": answer.text, "refusal": None, "role": "assistant"}
        call = answer.tool_call
        if call is not None:
            message["content"] = None
            function = {"arguments": answer.text, "name": call.name}
            if legacy:
                message["function_call"] = function
            else:
                message["tool_calls"] = [{"function": function, "id": call.id, "type": "function"}]
        choices.append({"content_filter_results": CONTENT_FILTER, "finish_reason": finish_reason(answer, legacy),
                        "index": index, "logprobs": _logprobs(answer, top), "message": message})  # fmt: skip
    return {"choices": choices, **head, "prompt_filter_results": PROMPT_FILTER, "usage": usage}


def stream_frames(answers: list[Answer], head: dict[str, Any], size: int, *,
                  legacy: bool, top: int | None) -> list[tuple[dict[str, Any], bool]]:  # fmt: skip
    """The ``chat.completion.chunk`` frames of ``answers`` after the prompt filter frame and
    before the usage frame, each with whether it is paced (the first of a round of content
    chunks after the first round). ``size``: tokens per content chunk."""

    def frame(index: int, delta: dict[str, Any], filters: dict[str, Any], reason: str | None,
              probs: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        return {"choices": [{"content_filter_results": filters, "delta": delta, "finish_reason": reason,
                             "index": index, "logprobs": probs}], **head}  # fmt: skip

    frames: list[tuple[dict[str, Any], bool]] = []
    probs = [_logprobs(answer, top) for answer in answers]
    for index, answer in enumerate(answers):
        frames.append((frame(index, _opening(answer, legacy), {}, None), False))
    rounds = max((-(-len(a.pieces) // size) for a in answers), default=0)
    for step in range(rounds):
        paced = step > 0
        for index, answer in enumerate(answers):
            cut = slice(step * size, (step + 1) * size)
            text = "".join(answer.pieces[cut])
            if not text:
                continue
            if answer.tool_call is None:
                delta: dict[str, Any] = {"content": text}
                entries = probs[index]
                if entries is not None:
                    entries = {**entries, "content": entries["content"][cut]}
                frames.append((frame(index, delta, CONTENT_FILTER, None, entries), paced))
            else:
                arguments = {"arguments": text}
                delta = {"function_call": arguments}
                if not legacy:
                    delta = {"tool_calls": [{"function": arguments, "index": 0}]}
                frames.append((frame(index, delta, {}, None), paced))
            paced = False
    for index, answer in enumerate(answers):
        frames.append((frame(index, {}, {}, finish_reason(answer, legacy)), False))
    return frames


def _opening(answer: Answer, legacy: bool) -> dict[str, Any]:
    """The role frame's delta; for a tool call, with the call's head and empty arguments."""
    call = answer.tool_call
    if call is None:
        return {"content": "", "refusal": None, "role": "assistant"}
    function = {"arguments": "", "name": call.name}
    if legacy:
        return {"content": None, "function_call": function, "refusal": None, "role": "assistant"}
    tool_call = {"function": function, "id": call.id, "index": 0, "type": "function"}
    return {"content": None, "refusal": None, "role": "assistant", "tool_calls": [tool_call]}
