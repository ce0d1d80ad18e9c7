"""The Responses API of the fake Azure server (tests/fake_azure.py), as Azure's v1 API serves it:
``POST /openai/v1/responses`` with the deployment's name as ``model`` and the ``api-key``
header; no api-version.

The answer is the fake's ``reply`` (cut to ``max_output_tokens`` tokens: status
``incomplete``), as one ``message`` output item. Usage: ``input_tokens`` = the o200k tokens of
the instructions and the input's text plus the stored context of ``previous_response_id``
(unless ``prompt_tokens`` is set), ``output_tokens`` = the reply's tokens + ``reasoning_tokens``
(unless ``completion_tokens`` is set), ``cached_tokens`` as set.

An ``item_reference`` input item names an output item of a stored response (unknown: 400);
its text counts in ``input_tokens``.

Stored responses: unless ``store`` is false, the response's id is kept in ``fake.stored`` with
its context (input + output tokens), and the response and its input items in
``fake.stored_objects``; a ``previous_response_id`` this server does not store is answered 400
``previous_response_not_found``, as a resource that never made it does. ``GET
/openai/v1/responses/{id}`` returns it, ``.../input_items`` lists its input items (``limit``,
``order``), ``DELETE`` forgets it, ``POST .../cancel`` is refused (only background responses
can be cancelled); an id it does not hold is 404.

Streams send Azure's typed events, each as ``event: TYPE`` + ``data: {...}`` with a
``sequence_number``: ``response.created``, ``response.in_progress``, the output item and
content part added, one ``response.output_text.delta`` per piece (``chunk_delay``,
``stall_after`` and ``break_after`` apply as for chat), the done events, then
``response.completed`` (or ``response.incomplete``) with the full response and its usage.
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio
from fake_wire import MSG_401, azure_error, id_headers, reply, send_response

from omixa.engine.tokens import count_text, encoding

RESPONSES_PATH = "/openai/v1/responses"


def input_text(body: dict[str, Any], stored_items: dict[str, dict[str, Any]] | None = None) -> str:
    """The text of the instructions and every input item's content (an item given by
    reference: the stored item's)."""
    parts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    if isinstance(items, str):
        return "".join([*parts, items])
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("type") == "item_reference":
            item = (stored_items or {}).get(str(item.get("id")), {})
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            parts.append(content)
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        for key in ("arguments", "output"):
            if isinstance(item, dict) and isinstance(item.get(key), str):
                parts.append(item[key])
    return "".join(parts)


def error(code: str | None, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


class ResponsesApi:
    """The Responses half of one fake server; its knobs and observations are the fake's."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    async def serve(self, scope: Any, receive: Any, send: Any, headers: dict, query: dict, body: Any) -> None:
        """Answer a request under ``/openai/v1/responses``."""
        fake = self.fake
        if headers.get("api-key") != fake.api_key:
            return await reply(send, 401, azure_error("401", MSG_401))
        if scope["path"] != RESPONSES_PATH:
            return await reply(send, *self.manage(scope["method"], scope["path"][len(RESPONSES_PATH) + 1 :], query))
        refused = self.check(body)
        if refused is not None:
            return await reply(send, *refused)
        if fake._failures:
            status, raw, head = fake._failures.pop(0)
            return await send_response(send, status, raw, head)
        await fake.model_answer(receive, send, body, lambda: self.stream(send, body), lambda: self.answer(body))

    def check(self, body: Any) -> tuple[int, dict[str, Any]] | None:
        """An error answer for a body Azure would refuse, else None."""
        fake = self.fake
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return 400, error("missing_required_parameter", "Missing required parameter: 'model'.", "model")
        if fake.deployments is not None and body["model"] not in fake.deployments:
            return 404, {
                "error": {
                    "code": "DeploymentNotFound",
                    "message": "The API deployment for this resource does not exist.",
                }
            }
        if not isinstance(body.get("input"), (str, list)):
            return 400, error("missing_required_parameter", "Missing required parameter: 'input'.", "input")
        for item in body["input"] if isinstance(body["input"], list) else ():
            if isinstance(item, dict) and item.get("type") == "item_reference" and item.get("id") not in self.items():
                return 400, error("invalid_value", f"Item with id '{item.get('id')}' not found.", "input")
        previous = body.get("previous_response_id")
        if previous is not None and previous not in fake.stored:
            return 400, error(
                "previous_response_not_found",
                f"Previous response with id '{previous}' not found.",
                "previous_response_id",
            )
        return None

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The response object (its text, status and usage), stored unless ``store`` is false."""
        fake = self.fake
        text, status = fake.reply, "completed"
        cap = body.get("max_output_tokens")
        if isinstance(cap, int):
            ids = encoding("o200k_base").encode_ordinary(text)
            if len(ids) > cap:
                text, status = encoding("o200k_base").decode(ids[:cap]), "incomplete"
        previous = body.get("previous_response_id")
        context = fake.stored.get(previous, 0) if previous else 0
        prompt = (
            count_text(input_text(body, self.items())) + context if fake.prompt_tokens is None else fake.prompt_tokens
        )
        output = count_text(text) + fake.reasoning_tokens if fake.completion_tokens is None else fake.completion_tokens
        response_id = f"resp_fake{len(fake.requests):020d}{fake.endpoint[-5:].replace(':', '')}"
        tier = fake.service_tier
        if tier is None and "service_tier" in body:
            tier = "priority" if body["service_tier"] == "priority" and not fake.downgrade_priority else "default"
        message = {
            "id": f"msg_{response_id[5:]}",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
        response = {
            "id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": cap, "model": fake.model,
            "output": [message], "parallel_tool_calls": True, "previous_response_id": previous,
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "service_tier": tier or "default", "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0), "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [], "top_p": 1.0,
            "truncation": "disabled",
            "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": fake.cached_tokens},
                      "output_tokens": output, "output_tokens_details": {"reasoning_tokens": fake.reasoning_tokens},
                      "total_tokens": prompt + output},
        }  # fmt: skip
        if body.get("store", True) is not False:
            fake.stored[response_id] = prompt + output
            items = body["input"] if isinstance(body["input"], list) else [{"role": "user", "content": body["input"]}]
            fake.stored_objects[response_id] = (response, items)
        return response

    def items(self) -> dict[str, dict[str, Any]]:
        """The output items of every stored response, by id."""
        return {item["id"]: item for response, _ in self.fake.stored_objects.values() for item in response["output"]}

    def manage(self, method: str, rest: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """A stored response's GET, input_items, DELETE or cancel."""
        fake = self.fake
        response_id, _, what = rest.partition("/")
        if response_id not in fake.stored_objects:
            return 404, error("not_found", f"Response with id '{response_id}' not found.")
        response, items = fake.stored_objects[response_id]
        if method == "GET" and what == "":
            return 200, response
        if method == "GET" and what == "input_items":
            listed = items[::-1] if query.get("order", "desc") == "desc" else items
            listed = listed[: int(query.get("limit", 20))]
            data = [{"id": f"msg_in{i}", "type": "message", **item} for i, item in enumerate(listed)]
            return 200, {"object": "list", "data": data, "first_id": None, "last_id": None, "has_more": False}
        if method == "DELETE" and what == "":
            del fake.stored_objects[response_id]
            fake.stored.pop(response_id, None)
            return 200, {"id": response_id, "object": "response", "deleted": True}
        if method == "POST" and what == "cancel":
            return 400, error(None, "Only responses created with background=true can be cancelled.")
        return 404, error("not_found", "Not found.")

    async def stream(self, send: Any, body: dict[str, Any]) -> None:
        fake = self.fake
        done = self.answer(body)
        message = done["output"][0]
        text = message["content"][0]["text"]
        sequence = iter(range(1_000_000))

        async def event(kind: str, **fields: Any) -> None:
            data = {"type": kind, "sequence_number": next(sequence), **fields}
            raw = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
            await send({"type": "http.response.body", "body": raw, "more_body": True})

        started = {**done, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), *id_headers()]})  # fmt: skip
        await event("response.created", response=started)
        await event("response.in_progress", response=started)
        await fake._first_wait()
        item = {**message, "status": "in_progress", "content": []}
        ids = {"item_id": message["id"], "output_index": 0}
        await event("response.output_item.added", output_index=0, item=item)
        await event("response.content_part.added", **ids, content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []})  # fmt: skip
        for i, piece in enumerate(fake._pieces(text)):
            if i == fake.stall_after:
                await trio.sleep_forever()
            if i == fake.break_after:
                raise RuntimeError("fake_azure: dropping the connection (break_after)")
            if i:
                await trio.sleep(fake.chunk_delay)
            await event("response.output_text.delta", **ids, content_index=0, delta=piece, logprobs=[])
        await event("response.output_text.done", **ids, content_index=0, text=text, logprobs=[])
        await event("response.content_part.done", **ids, content_index=0, part=message["content"][0])
        await event("response.output_item.done", output_index=0, item=message)
        await event("response.completed" if done["status"] == "completed" else "response.incomplete", response=done)
