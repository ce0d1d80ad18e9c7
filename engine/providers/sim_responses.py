"""The simulator's Responses API (``omixa demo``): the chat answers of
:mod:`engine.providers.simulator`, turned into response objects and Azure's typed events by
:mod:`engine.providers._responses`, and stored like Azure's.

Every simulated deployment belongs to one simulated resource: a response stored by one can
be continued (``previous_response_id``: its conversation goes before the new input), its
output items sent back by reference (``item_reference``), and it can be read, listed and
deleted through any other. The store lives in the process's memory and keeps the
latest :data:`MAX_STORED` responses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs

from omixa.engine.errors import UpstreamError
from omixa.engine.providers import _responses
from omixa.engine.upstream import Completion, SseEvent

MAX_STORED = 10_000


@attrs.frozen
class _Stored:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]  # chat messages: the input and the answer
    items: list[dict[str, Any]]  # the request's input items, as given


def _input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    given = body["input"]
    if isinstance(given, str):
        given = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": given}]}]
    return [{"id": f"msg_in{i:04d}", "type": "message", **item} for i, item in enumerate(given)]


class SimulatedResponses:
    """The simulated resource's stored responses, and the Responses calls on top of a
    simulator deployment's chat calls."""

    def __init__(self) -> None:
        self._stored: OrderedDict[str, _Stored] = OrderedDict()
        self._items: dict[str, str] = {}  # an output item's id -> its response's id

    def _resolved(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with each ``item_reference`` replaced by the stored item (a reasoning item
        by id is dropped: the simulator does not reason). Errors: UpstreamError 400."""
        if not isinstance(body.get("input"), list):
            return body
        items = []
        for item in body["input"]:
            kind = item.get("type")
            if kind == "reasoning":
                continue
            if kind == "item_reference":
                owner = self._stored.get(self._items.get(item.get("id"), ""))
                found = [o for o in owner.response["output"] if o.get("id") == item.get("id")] if owner else []
                if not found:
                    raise UpstreamError(f"Item with id '{item.get('id')}' not found.", upstream_status=400)
                item = found[0]
            items.append(item)
        return {**body, "input": items}

    def _chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The chat body of ``body`` (after its stored history) and the response's shell.
        Errors: InvalidRequest (no translation), UpstreamError 400 (an unknown previous id or item)."""
        body = self._resolved(body)
        _responses.check(body, stored_history=True)
        history: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            stored = self._stored.get(previous)
            if stored is None:
                raise UpstreamError(f"Previous response with id '{previous}' not found.", upstream_status=400)
            history = stored.conversation
        chat = _responses.chat_body(body, history)
        shell = _responses.response_shell(body, _responses.new_response_id(), str(body.get("model")), store=True)
        shell["store"] = body.get("store") is not False
        return chat, shell

    def _keep(self, body: dict[str, Any], chat: dict[str, Any], response: dict[str, Any]) -> None:
        if not response["store"]:
            return
        answer = _responses.messages_of({"input": response["output"]})
        self._stored[response["id"]] = _Stored(response, [*chat["messages"], *answer], _input_items(body))
        self._items.update((item["id"], response["id"]) for item in response["output"])
        while len(self._stored) > MAX_STORED:
            _, dropped = self._stored.popitem(last=False)
            for item in dropped.response["output"]:
                self._items.pop(item["id"], None)

    async def respond(
        self, body: dict[str, Any], complete: Callable[[dict[str, Any]], Awaitable[Completion]], model: str
    ) -> Completion:
        chat, shell = self._chat(body)
        shell["model"] = model
        result = _responses.completion_as_response(await complete(chat), shell)
        self._keep(body, chat, result.body)
        return result

    @asynccontextmanager
    async def open_stream(
        self,
        body: dict[str, Any],
        open_chat: Callable[[dict[str, Any]], AbstractAsyncContextManager[AsyncIterator[SseEvent]]],
        model: str,
    ) -> AsyncIterator[AsyncIterator[SseEvent]]:
        chat, shell = self._chat(body)
        shell["model"] = model
        request = {**chat, "stream_options": {"include_usage": True}}
        async with open_chat(request) as chunks:
            yield _responses.ResponseEvents(chunks, shell, on_done=lambda response: self._keep(body, chat, response))

    def manage(self, method: str, path: str) -> dict[str, Any]:
        """Azure's answers for ``/responses{path}``: GET, input_items, DELETE, cancel.
        Errors: UpstreamError 404 (not stored), 400 (cancel: no background responses)."""
        route, _, query = path.partition("?")
        response_id, _, what = route.lstrip("/").partition("/")
        stored = self._stored.get(unquote(response_id))
        if stored is None:
            raise UpstreamError(f"Response with id '{unquote(response_id)}' not found.", upstream_status=404)
        if method == "GET" and what == "":
            return stored.response
        if method == "GET" and what == "input_items":
            params = dict(parse_qsl(query))
            items = stored.items if params.get("order") == "asc" else stored.items[::-1]
            page = items[: int(params.get("limit", 20))]
            return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None, "has_more": len(items) > len(page)}  # fmt: skip
        if method == "DELETE" and what == "":
            del self._stored[unquote(response_id)]
            for item in stored.response["output"]:
                self._items.pop(item["id"], None)
            return {"id": stored.response["id"], "object": "response", "deleted": True}
        if method == "POST" and what == "cancel":
            raise UpstreamError("Only responses created with background=true can be cancelled.", upstream_status=400)
        raise UpstreamError("Not found.", upstream_status=404)


# The one simulated resource of this process.
RESOURCE = SimulatedResponses()
