"""The Responses API of the simulator (``omixa demo``), with the official openai SDK: text,
streaming, structured output through ``responses.parse``, a function-call round trip, a
chain of ``previous_response_id`` across two simulated deployments (one simulated resource),
and a stored response read, listed and deleted; every answer billed exactly what its usage
says, on both storage backends."""

from __future__ import annotations

import json

import openai
import pytest
from harness import MODEL, open_gateway
from pydantic import BaseModel, Field
from sdk_helpers import in_thread

from omixa.engine.catalog import cost_of, load_catalog
from omixa.engine.upstream import Usage

MODEL_INFO = load_catalog().get(MODEL)
assert MODEL_INFO is not None  # the shipped catalog lists it
PRICES = MODEL_INFO.prices
SIMULATED = [
    {"name": f"sim-{i}", "model": MODEL, "provider": "simulator", "sim_first_token_ms": 0, "sim_chunk_interval_ms": 0}
    for i in (1, 2)
]
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Trip(BaseModel):
    city: str
    days: int = Field(ge=1, le=5)
    stops: list[str]


async def charged_as_reported(gw, account: str, responses: list) -> None:
    """Each charge is the catalog price of its response's usage; the books verify."""
    entries = await gw.settled_entries(account)
    charges = [e.amount for e in entries if e.type == "charge"]
    expected = [
        cost_of(Usage(prompt_tokens=r.usage.input_tokens, completion_tokens=r.usage.output_tokens), PRICES)
        for r in responses
    ]
    assert sorted(charges) == sorted(expected)
    assert await gw.storage.verify_ledger() == []


async def test_text_streaming_and_structured_output(database_url, sdk):
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("10.00")
        client = sdk(gw, key)
        text = await in_thread(client.responses.create, model=MODEL, instructions="Be brief.", input="Hello there.")
        assert text.status == "completed" and text.output_text and text.store is True

        def stream():
            with client.responses.stream(model=MODEL, instructions="Be brief.", input="Hello there.") as events:
                kinds = [event.type for event in events]
                return kinds, events.get_final_response()

        kinds, streamed = await in_thread(stream)
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert streamed.output_text == text.output_text  # the same request gets the same words

        parsed = await in_thread(client.responses.parse, model=MODEL, input="Plan a trip.", text_format=Trip)
        assert isinstance(parsed.output_parsed, Trip)
        await charged_as_reported(gw, account, [text, streamed, parsed])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_function_call_round_trip(database_url, stream, sdk):
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("10.00")
        client = sdk(gw, key)

        def create(**body):
            if not stream:
                return client.responses.create(model=MODEL, tools=[TOOL], **body)
            with client.responses.stream(model=MODEL, tools=[TOOL], **body) as events:
                return events.get_final_response()

        asked = await in_thread(create, input="What is the weather in Paris?")
        call = next(item for item in asked.output if item.type == "function_call")
        arguments = json.loads(call.arguments)
        assert call.name == "get_weather" and isinstance(arguments["city"], str) and 1 <= arguments["days"] <= 7
        answered = await in_thread(
            create,
            input=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                {"type": "function_call_output", "call_id": call.call_id, "output": '{"forecast": "sunny"}'},
            ],
        )
        assert answered.output_text and not [i for i in answered.output if i.type == "function_call"]
        await charged_as_reported(gw, account, [asked, answered])


async def test_a_chain_of_stored_responses_on_the_simulated_resource(database_url, sdk):
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("10.00")
        client = sdk(gw, key)
        chain = [await in_thread(client.responses.create, model=MODEL, input="Tell me about foxes.")]
        for _ in range(4):  # on either simulated deployment: one resource holds them all
            chain.append(
                await in_thread(
                    client.responses.create, model=MODEL, input="And then?", previous_response_id=chain[-1].id
                )
            )
        # Each follow-up's input carries the whole conversation before it.
        inputs = [r.usage.input_tokens for r in chain]
        assert inputs == sorted(inputs) and inputs[-1] > inputs[0] + 3 * chain[0].usage.output_tokens
        fetched = await in_thread(client.responses.retrieve, chain[0].id)
        assert fetched.id == chain[0].id and fetched.output_text == chain[0].output_text
        items = await in_thread(client.responses.input_items.list, chain[0].id)
        assert [item.content[0].text for item in items.data] == ["Tell me about foxes."]
        await in_thread(client.responses.delete, chain[0].id)
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.responses.retrieve, chain[0].id)
        await charged_as_reported(gw, account, chain)
