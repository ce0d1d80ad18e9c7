"""What developers try first, against a gateway whose deployments are simulated (as in
``omixa demo``), with the official openai SDK: structured outputs through ``parse()``, a
tool-call round trip, ``n`` choices and ``logprobs``, streamed and not; every answer billed
exactly what its usage says, on both storage backends."""

from __future__ import annotations

import json
from enum import StrEnum

import openai
import pytest
import trio
from harness import MODEL, open_gateway
from pydantic import BaseModel, Field

from omixa.engine.catalog import cost_of, load_catalog
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import Usage

MODEL_INFO = load_catalog().get(MODEL)
assert MODEL_INFO is not None  # the shipped catalog lists it
PRICES = MODEL_INFO.prices
SIMULATED = [{"name": "sim", "model": MODEL, "provider": "simulator", "region": "local",
              "sim_first_token_ms": 0, "sim_chunk_interval_ms": 0}]  # fmt: skip
ASK = [{"role": "user", "content": "Plan a small team offsite."}]


class Role(StrEnum):
    lead = "lead"
    engineer = "engineer"
    designer = "designer"


class Address(BaseModel):
    street: str
    city: str
    postcode: str | None


class Member(BaseModel):
    name: str
    role: Role
    age: int = Field(ge=18, le=70)
    rating: float = Field(ge=0, le=5)
    address: Address | None
    skills: list[str]


class Topic(BaseModel):
    title: str
    subtopics: list[Topic]


class Offsite(BaseModel):
    venue: str
    days: int = Field(ge=1, le=3)
    remote: bool
    members: list[Member]
    agenda: list[Topic]
    budget_usd: float | None


class GetWeather(BaseModel):
    """The weather forecast for a city."""

    city: str
    unit: Role | None = None
    days: int = Field(ge=1, le=7)


LOOKUP = {"type": "function", "function": {"name": "lookup_flight", "description": "Find a flight.",
          "parameters": {"type": "object", "properties": {
              "origin": {"type": "string", "minLength": 3, "maxLength": 3},
              "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
              "cabin": {"type": "string", "enum": ["economy", "business"]},
              "legs": {"type": "array", "items": {"type": "object", "properties": {
                  "date": {"type": "string", "format": "date"}}, "required": ["date"]}}},
              "required": ["origin", "passengers", "cabin"]}}}  # fmt: skip


def sdk(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


async def in_thread(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def final_of_stream(client: openai.OpenAI, **params):
    """The SDK's stream helper's reassembled completion (blocking: run it in a thread)."""
    with client.chat.completions.stream(**params, stream_options={"include_usage": True}) as stream:
        return stream.get_final_completion()


def charge_of(usage) -> int:
    return cost_of(Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens),
                   PRICES)  # fmt: skip


async def assert_billed(gw, account: str, usages: list) -> None:
    """The account's charges are exactly the answers' usages at the catalog price, and the
    request logs say the same tokens."""
    entries = await gw.settled_entries(account)
    charges = [e for e in entries if e.type == "charge"]
    assert [e.amount for e in charges] == [charge_of(u) for u in usages]
    for entry, usage in zip(charges, usages, strict=True):
        row = await gw.request_log(entry.request_id)
        assert (row.status, row.prompt_tokens, row.completion_tokens) == (
            "ok", usage.prompt_tokens, usage.completion_tokens)  # fmt: skip
    assert await gw.storage.verify_ledger() == []


async def test_parse_fills_a_pydantic_model(database_url):
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("5.00")
        client = sdk(gw, key)
        parsed = await in_thread(client.chat.completions.parse, model=MODEL, messages=ASK, response_format=Offsite)
        again = await in_thread(client.chat.completions.parse, model=MODEL, messages=ASK, response_format=Offsite)
        streamed = await in_thread(final_of_stream, client, model=MODEL, messages=ASK, response_format=Offsite)

        offsite = parsed.choices[0].message.parsed
        assert isinstance(offsite, Offsite) and offsite.members and offsite.agenda
        assert parsed.choices[0].finish_reason == "stop"
        # Same request, same answer; streamed or not.
        assert again.choices[0].message.parsed == offsite == streamed.choices[0].message.parsed
        content = parsed.choices[0].message.content
        assert parsed.usage.completion_tokens == count_text(content)
        await assert_billed(gw, account, [parsed.usage, again.usage, streamed.usage])


async def test_json_object_and_a_cap_too_small_for_the_schema(database_url):
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("5.00")
        client = sdk(gw, key)
        plain = await in_thread(client.chat.completions.create, model=MODEL, messages=ASK,
                                response_format={"type": "json_object"})  # fmt: skip
        assert isinstance(json.loads(plain.choices[0].message.content), dict)
        # Cut by the cap, as a model would be: parse() says so, and the tokens stay within it.
        with pytest.raises(openai.LengthFinishReasonError) as cut:
            await in_thread(client.chat.completions.parse, model=MODEL, messages=ASK, response_format=Offsite,
                            max_completion_tokens=10, n=2)  # fmt: skip
        usage = cut.value.completion.usage
        assert usage.completion_tokens == 20
        await assert_billed(gw, account, [plain.usage, usage])


async def test_a_tool_call_round_trip(database_url):
    # parse() takes only strict tools, such as pydantic_function_tool's.
    strict = [openai.pydantic_function_tool(GetWeather)]
    tools = [*strict, LOOKUP]
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("5.00")
        client = sdk(gw, key)
        messages: list = [{"role": "user", "content": "What is the weather in Lisbon? Use get weather."}]
        first = await in_thread(client.chat.completions.parse, model=MODEL, messages=messages, tools=strict)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "GetWeather"  # the tool the user named
        # A strict tool is parsed into its model by the SDK: the arguments validate.
        assert isinstance(call.function.parsed_arguments, GetWeather)
        assert 1 <= call.function.parsed_arguments.days <= 7
        assert first.usage.completion_tokens == count_text(call.function.name) + count_text(call.function.arguments)

        messages += [choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}),
                     {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]  # fmt: skip
        final = await in_thread(client.chat.completions.create, model=MODEL, messages=messages, tools=tools)
        assert final.choices[0].finish_reason == "stop"
        assert final.choices[0].message.content and not final.choices[0].message.tool_calls

        # The other tool, by name, with a plain (not strict) schema: its constraints hold.
        named = await in_thread(client.chat.completions.create, model=MODEL, messages=messages[:1], tools=tools,
                                tool_choice={"type": "function", "function": {"name": "lookup_flight"}})  # fmt: skip
        arguments = json.loads(named.choices[0].message.tool_calls[0].function.arguments)
        assert len(arguments["origin"]) == 3 and 1 <= arguments["passengers"] <= 9
        assert arguments["cabin"] in ("economy", "business")
        refused = await in_thread(client.chat.completions.create, model=MODEL, messages=messages[:1], tools=tools,
                                  tool_choice="none")  # fmt: skip
        assert refused.choices[0].message.content and refused.choices[0].finish_reason == "stop"
        await assert_billed(gw, account, [first.usage, final.usage, named.usage, refused.usage])


async def test_a_streamed_tool_call_round_trip(database_url):
    tools = [openai.pydantic_function_tool(GetWeather)]
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("5.00")
        client = sdk(gw, key)
        messages: list = [{"role": "user", "content": "Weather in Oslo, please."}]

        def raw_stream(messages):
            return list(client.chat.completions.create(model=MODEL, messages=messages, tools=tools, stream=True,
                                                       stream_options={"include_usage": True}))  # fmt: skip

        chunks = await in_thread(raw_stream, messages)
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        opening = deltas[0].tool_calls[0]
        assert (opening.index, opening.type, opening.function.name) == (0, "function", "GetWeather")
        assert opening.id.startswith("call_") and opening.function.arguments == ""
        fragments = [d.tool_calls[0].function.arguments for d in deltas[1:] if d.tool_calls]
        assert len(fragments) > 1 and all(d.tool_calls[0].id is None for d in deltas[1:] if d.tool_calls)
        arguments = "".join(fragments)
        GetWeather.model_validate_json(arguments)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        usage = chunks[-1].usage
        assert usage.completion_tokens == count_text("GetWeather") + count_text(arguments)

        # The SDK's own stream helper reassembles the same call.
        helped = await in_thread(final_of_stream, client, model=MODEL, messages=messages, tools=tools)
        call = helped.choices[0].message.tool_calls[0]
        assert (call.id, call.function.arguments) == (opening.id, arguments)
        assert isinstance(call.function.parsed_arguments, GetWeather)

        messages += [{"role": "assistant", "content": None, "tool_calls": [
                         {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                                          "arguments": arguments}}]},
                     {"role": "tool", "tool_call_id": call.id, "content": "-3C, snow"}]  # fmt: skip
        answer = await in_thread(raw_stream, messages)
        text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
        assert text and not any(c.choices[0].delta.tool_calls for c in answer if c.choices)
        assert [c.choices[0].finish_reason for c in answer if c.choices][-1] == "stop"
        assert answer[-1].usage.completion_tokens == count_text(text)
        await assert_billed(gw, account, [usage, helped.usage, answer[-1].usage])


async def test_three_choices_each_different_and_billed_together(database_url):
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("5.00")
        client = sdk(gw, key)
        result = await in_thread(client.chat.completions.create, model=MODEL, messages=ASK, n=3)
        texts = [c.message.content for c in result.choices]
        assert [c.index for c in result.choices] == [0, 1, 2] and len(set(texts)) == 3
        assert result.usage.completion_tokens == sum(count_text(t) for t in texts)
        assert result.usage.prompt_tokens == count_chat_prompt({"messages": ASK})

        def streamed():
            return list(client.chat.completions.create(model=MODEL, messages=ASK, n=3, stream=True,
                                                       stream_options={"include_usage": True}))  # fmt: skip

        chunks = await in_thread(streamed)
        joined = {0: "", 1: "", 2: ""}
        finished = {}
        for chunk in chunks:
            for choice in chunk.choices:
                joined[choice.index] += choice.delta.content or ""
                finished[choice.index] = choice.finish_reason or finished.get(choice.index)
        assert [joined[i] for i in range(3)] == texts and finished == {0: "stop", 1: "stop", 2: "stop"}
        assert chunks[-1].usage.completion_tokens == result.usage.completion_tokens

        parsed = await in_thread(client.chat.completions.parse, model=MODEL, messages=ASK, n=3, response_format=Address)
        assert len({c.message.content for c in parsed.choices}) == 3
        assert all(isinstance(c.message.parsed, Address) for c in parsed.choices)
        await assert_billed(gw, account, [result.usage, chunks[-1].usage, parsed.usage])


async def test_logprobs_with_top_alternatives(database_url):
    async with open_gateway(database_url, deployments=SIMULATED) as gw:
        account, key = await gw.funded_account("5.00")
        client = sdk(gw, key)
        result = await in_thread(client.chat.completions.create, model=MODEL, messages=ASK,
                                 logprobs=True, top_logprobs=2)  # fmt: skip
        content = result.choices[0].message.content
        entries = result.choices[0].logprobs.content
        assert "".join(e.token for e in entries) == content and len(entries) == count_text(content)
        for entry in entries:
            assert entry.bytes == list(entry.token.encode()) and entry.logprob < 0
            assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token
            assert entry.top_logprobs[1].logprob < entry.logprob

        def streamed():
            return list(client.chat.completions.create(model=MODEL, messages=ASK, logprobs=True, top_logprobs=2,
                                                       stream=True, stream_options={"include_usage": True}))  # fmt: skip

        chunks = await in_thread(streamed)
        streamed_entries = [e for c in chunks if c.choices and c.choices[0].logprobs
                            for e in c.choices[0].logprobs.content or ()]  # fmt: skip
        assert streamed_entries == entries

        bare = await in_thread(client.chat.completions.create, model=MODEL, messages=ASK, logprobs=True)
        assert [e.token for e in bare.choices[0].logprobs.content] == [e.token for e in entries]
        assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)
        plain = await in_thread(client.chat.completions.create, model=MODEL, messages=ASK)
        assert plain.choices[0].logprobs is None and plain.choices[0].message.content == content

        # What Azure refuses is refused alike (400), and costs nothing.
        for extra in ({"logprobs": True, "top_logprobs": 21}, {"top_logprobs": 2}):
            with pytest.raises(openai.BadRequestError, match="top_logprobs"):
                await in_thread(client.chat.completions.create, model=MODEL, messages=ASK, **extra)
        await assert_billed(gw, account, [result.usage, chunks[-1].usage, bare.usage, plain.usage])
