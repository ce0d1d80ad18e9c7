"""The simulator's answers at the adapter: JSON that validates against schemas Pydantic and
hand-written tools produce, tool choice rules, caps never outgrown, usage equal to the
tokens produced, n>1 and tool-call streams paced like text, the legacy function form, and
Azure's 400s. (tests/test_simulator_sdk.py drives the same through a gateway and the SDK.)"""

from __future__ import annotations

import datetime as dt
import json
import random
from enum import StrEnum
from typing import Annotated, Literal

import pytest
import trio
from provider_helpers import collect
from pydantic import BaseModel, Field, TypeAdapter

from omixa.engine.config import DeploymentConfig
from omixa.engine.errors import UpstreamError
from omixa.engine.providers import SimulatorProvider
from omixa.engine.providers.sim_answers import WORDS
from omixa.engine.providers.sim_schema import SchemaValues
from omixa.engine.tokens import count_text

USER = [{"role": "user", "content": "Help me out."}]
FORECAST = {"type": "function", "function": {"name": "forecast", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1,
                                                                       "maximum": 3}},
    "required": ["city", "days"], "additionalProperties": False}}}  # fmt: skip
CLOCK = {"type": "function", "function": {"name": "current_time"}}  # no parameters at all


def sim(**knobs) -> SimulatorProvider:
    fields = dict(name="sim", model="gpt-4o-mini", provider="simulator", sim_first_token_ms=0,
                  sim_chunk_interval_ms=0)  # fmt: skip
    return SimulatorProvider(DeploymentConfig(**{**fields, **knobs}))


class Kind(StrEnum):
    a = "a"
    b = "b"


class Leaf(BaseModel):
    when: dt.datetime
    day: dt.date
    kind: Kind
    ratio: Annotated[float, Field(gt=0, lt=1)]
    count: Annotated[int, Field(ge=-5, le=-2)]
    code: Annotated[str, Field(min_length=4, max_length=6)]


class Tree(BaseModel):
    name: str
    leaves: Annotated[list[Leaf], Field(min_length=1, max_length=2)]
    children: list[Tree] = []
    parent: Tree | None = None
    tags: dict[str, int] = {}
    pair: tuple[int, str] = (0, "")
    mode: Literal["x", "y"] = "x"
    maybe: int | str | None = None


@pytest.mark.parametrize("model", [Tree, Leaf, list[Leaf], dict[str, Tree]])
def test_values_validate_against_pydantic_schemas(model):
    adapter = TypeAdapter(model)
    schema = adapter.json_schema()
    values = [SchemaValues(schema, random.Random(seed), WORDS).value() for seed in range(150)]
    for value in values:
        adapter.validate_json(json.dumps(value))
    assert SchemaValues(schema, random.Random(7), WORDS).value() == values[7]  # seeded, so repeatable
    assert len({json.dumps(v) for v in values}) > 100  # and varied


def test_a_required_recursion_still_ends():
    schema = {"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}, "required": ["next"]}},
              "$ref": "#/$defs/N"}  # fmt: skip
    value = SchemaValues(schema, random.Random(1), WORDS).value()
    depth = 0
    while value:
        value, depth = value["next"], depth + 1
    assert 5 < depth <= 40


async def test_tool_choice_rules():
    provider = sim()

    async def called(messages=USER, **extra):
        choice = (await provider.complete({"messages": messages, **extra})).body["choices"][0]
        calls = choice["message"].get("tool_calls")
        assert choice["finish_reason"] == ("tool_calls" if calls else "stop")
        return calls[0]["function"] if calls else None

    tools = [FORECAST, CLOCK]
    auto = await called(tools=tools)
    assert auto["name"] in ("forecast", "current_time")
    assert (await called([{"role": "user", "content": "What is the current time?"}], tools=tools))["name"] == (
        "current_time")  # fmt: skip
    assert json.loads((await called(tools=tools, tool_choice="required", n=1) or {})["arguments"]) is not None
    assert await called(tools=tools, tool_choice="none") is None
    named = await called(tools=tools, tool_choice={"type": "function", "function": {"name": "forecast"}})
    arguments = json.loads(named["arguments"])
    assert set(arguments) == {"city", "days"} and 1 <= arguments["days"] <= 3
    clock = await called(tools=tools, tool_choice={"type": "function", "function": {"name": "current_time"}})
    assert clock["arguments"] == "{}"
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "current_time"}}]}}  # fmt: skip
    assert (await called(tools=tools, tool_choice=allowed))["name"] == "current_time"
    # After a tool's result, "auto" answers in text; "required" calls again.
    after = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "current_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"}]  # fmt: skip
    assert await called(after, tools=tools) is None
    assert await called(after, tools=tools, tool_choice="required") is not None


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"tools": [FORECAST], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
        ({"tool_choice": "required"}, "no tools"),
        ({"logprobs": True, "top_logprobs": 21}, "from 0 to 20"),
        ({"logprobs": False, "top_logprobs": 1}, "only allowed when 'logprobs' is true"),
    ],
)
async def test_what_azure_refuses_is_a_400(extra, words):
    for call in (sim().complete, lambda body: collect(sim(), body)):
        with pytest.raises(UpstreamError, match=words) as refused:
            await call({"messages": USER, **extra})
        assert refused.value.upstream_status == 400


async def test_the_legacy_function_form():
    body = {"messages": USER, "functions": [FORECAST["function"]], "function_call": {"name": "forecast"}}
    choice = (await sim().complete(body)).body["choices"][0]
    assert choice["finish_reason"] == "function_call" and "tool_calls" not in choice["message"]
    call = choice["message"]["function_call"]
    events = await collect(sim(), {**body, "stream": True})
    deltas = [e.data["choices"][0]["delta"] for e in events if e.data and e.data["choices"]]
    assert deltas[0]["function_call"] == {"arguments": "", "name": "forecast"}
    assert "".join(d.get("function_call", {}).get("arguments", "") for d in deltas) == call["arguments"]


@pytest.mark.parametrize("cap", [1, 2, 5, 9, 30, 200])
async def test_no_choice_outgrows_the_cap_and_usage_is_what_was_produced(cap):
    provider = sim(sim_completion_tokens=40)
    schema = {"type": "json_schema", "json_schema": {"name": "T", "schema": TypeAdapter(Tree).json_schema()}}
    for extra in ({}, {"tools": [FORECAST]}, {"response_format": schema}, {"response_format": {"type": "json_object"}}):
        body = {"messages": USER, "n": 3, "max_tokens": cap, **extra}
        completion = await provider.complete(body)
        total = 0
        for choice in completion.body["choices"]:
            message = choice["message"]
            calls = message.get("tool_calls") or []
            tokens = count_text(message["content"] or "") + sum(
                count_text(c["function"]["name"]) + count_text(c["function"]["arguments"]) for c in calls)  # fmt: skip
            assert tokens <= cap
            whole = choice["finish_reason"] != "length"
            if whole and "response_format" in extra:
                json.loads(message["content"])
            total += tokens
        assert completion.usage.completion_tokens == total
        events = await collect(provider, {**body, "stream": True, "stream_options": {"include_usage": True}})
        assert events[-2].data["usage"] == completion.body["usage"]


async def test_n_choice_and_tool_call_streams_are_paced_like_text(autojump_clock):
    provider = sim(sim_first_token_ms=50, sim_chunk_interval_ms=20, sim_tokens_per_chunk=3, sim_completion_tokens=9)
    for extra in ({"n": 2}, {"tools": [FORECAST]}):
        start = trio.current_time()
        times = []
        async with provider.open_stream({"messages": USER, "stream": True, **extra}) as events:
            async for event in events:
                for choice in (event.data or {}).get("choices") or ():
                    delta = choice["delta"]
                    if delta.get("content") or (delta.get("tool_calls") or [{}])[0].get("function", {}).get(
                        "arguments"
                    ):
                        times.append((round(trio.current_time() - start, 3), choice["index"]))
        if "n" in extra:
            assert times == [(0.05, 0), (0.05, 1), (0.07, 0), (0.07, 1), (0.09, 0), (0.09, 1)]
        else:
            assert times[0][0] == 0.05 and [t for t, _ in times] == [
                round(0.05 + 0.02 * i, 3) for i in range(len(times))
            ]


@pytest.mark.parametrize(
    "schema",
    [
        {"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}]}}, "$ref": "#/$defs/A"},  # a branch back to itself
        {"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"},  # a reference to itself
        {"type": "array", "minItems": 10**9, "items": {"type": "array", "minItems": 10**9}},
        {"type": "string", "minLength": 10**9},
        {"type": "object", "minProperties": 10**6},
        {"type": "number", "minimum": 1e300, "maximum": 1e308, "multipleOf": 1e-300},
        {"type": "object", "required": 5, "properties": [1], "allOf": [1, {"$ref": 5}]},
    ],
)
def test_a_hostile_schema_gets_a_bounded_value_not_a_crash(schema):
    """A client's schema is never trusted: whatever it asks, the value is made quickly and stays
    small (it may not validate when the schema asks for millions of items)."""
    value = SchemaValues(schema, random.Random(1), WORDS).value()
    assert len(json.dumps(value)) < 200_000
