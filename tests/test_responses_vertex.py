"""The Responses API on Vertex Gemini, through the chat translation
(engine/providers/_responses.py): the official openai SDK → real Hypercorn → fake Vertex, on
both backends. Instructions and multi-turn input are translated, the answer comes back as a
response object or Azure's typed events, billed from Vertex's usage; what cannot be
translated is refused before anything is held.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import pytest
from fake_vertex import DEFAULT_REPLY, open_fake_vertex, prompt_tokens_of
from harness import open_gateway
from sdk_helpers import in_thread
from test_vertex_e2e import MODEL, cost, vertex_deployment

from omixa.engine.providers import _responses, gemini
from omixa.engine.tokens import count_text

INPUT = [
    {"role": "user", "content": "Hello."},
    {"role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]},
    {"role": "user", "content": [{"type": "input_text", "text": "Say something about foxes."}]},
]
BODY = {"model": MODEL, "instructions": "You are terse.", "input": INPUT}


def gemini_prompt(body: dict) -> int:
    """What the fake Vertex reports as the prompt of ``body``'s translation."""
    return prompt_tokens_of(gemini.to_gemini(_responses.chat_body(body), MODEL))


@asynccontextmanager
async def vertex_gateway(database_url):
    """A fake Vertex and a gateway with one deployment of the model on it: ``(fake, gw)``."""
    async with (
        open_fake_vertex() as fake,
        open_gateway(database_url, deployments=[vertex_deployment(fake)]) as gw,
    ):
        yield fake, gw


async def books(gw, account: str, start: int, spent: int) -> None:
    wallet = await gw.storage.get_wallet(account)
    assert (wallet.locked, wallet.balance) == (0, start - spent)
    assert await gw.storage.verify_ledger() == []


async def test_a_response_on_vertex_is_translated_and_billed(database_url, sdk):
    async with vertex_gateway(database_url) as (fake, gw):
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        response = await in_thread(sdk(gw, key).responses.create, **BODY, max_output_tokens=500)
        assert (response.object, response.status, response.store) == ("response", "completed", False)
        assert response.output_text == DEFAULT_REPLY
        sent = fake.requests[-1].json
        assert sent["systemInstruction"]["parts"][0]["text"] == "You are terse."
        assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
        assert sent["generationConfig"]["maxOutputTokens"] == 500
        prompt, completion = gemini_prompt(BODY), count_text(DEFAULT_REPLY)
        assert (response.usage.input_tokens, response.usage.output_tokens) == (prompt, completion)
        await books(gw, account, start, cost(prompt, completion))
        await gw.flushed()
        assert await gw.storage.find_stored_response(account, response.id) is None  # Vertex keeps nothing


async def test_a_streamed_response_on_vertex_gets_the_typed_events(database_url, sdk):
    async with vertex_gateway(database_url) as (fake, gw):
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance

        def stream():
            with sdk(gw, key).responses.stream(**BODY) as events:
                kinds = [event.type for event in events]
                return kinds, events.get_final_response()

        kinds, response = await in_thread(stream)
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        assert "response.output_text.delta" in kinds
        assert response.output_text == DEFAULT_REPLY
        prompt, completion = gemini_prompt(BODY), count_text(DEFAULT_REPLY)
        await books(gw, account, start, cost(prompt, completion))
        await gw.flushed()
        assert await gw.storage.find_stored_response(account, response.id) is None


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": [{"type": "item_x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "input[0].content[0].type",
        ),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}, "tools"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}, "input[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ],
)
async def test_what_vertex_cannot_take_is_refused_before_any_hold(database_url, change, param):
    async with vertex_gateway(database_url) as (fake, gw):
        account, key = await gw.funded_account("10.00")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            answer = await client.post(f"{gw.base_url}/responses", json={**BODY, **change})
        error = answer.json()["error"]
        assert (answer.status_code, error["code"], error["param"]) == (400, "invalid_request", param)
        assert [e.type for e in await gw.storage.ledger_entries(account)] == ["top_up"]
        assert not fake.requests
