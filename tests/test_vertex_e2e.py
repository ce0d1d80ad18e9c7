"""End to end on Vertex: the official openai SDK → real Hypercorn → actors → fake Vertex.

Money is checked exactly on both backends: the catalog price of the tokens Vertex's
``usageMetadata`` reports (completion = candidates + thoughts), holds released, a request log
row and a ledger that verifies (also with ``omixa ledger verify`` run as a separate process).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from fake_vertex import DEFAULT_REPLY, DEFAULT_THOUGHT, open_fake_vertex, prompt_tokens_of
from harness import open_gateway

from omixa.engine.catalog import cost_of, load_catalog
from omixa.engine.providers import gemini
from omixa.engine.tokens import count_text
from omixa.engine.upstream import Usage

MODEL = "gemini-2.5-flash"
MODEL_INFO = load_catalog().get(MODEL)
assert MODEL_INFO is not None  # the shipped catalog lists it
PRICES = MODEL_INFO.prices
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about foxes."},
]
GEMINI_BODY = gemini.to_gemini({"messages": MESSAGES}, MODEL)
PROMPT = prompt_tokens_of(GEMINI_BODY)  # what the fake reports for MESSAGES


def vertex_deployment(fake: Any, *, name: str = "vertex-1", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    auth = {} if "service_account_file" in extra else {"api_key": fake.api_key}
    return {"name": name, "model": model, "provider": "vertex", "endpoint": fake.endpoint,
            "project": "fake-project", "location": "us-central1", **auth, **extra}  # fmt: skip


def sdk(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


async def in_thread(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def cost(prompt: int, completion: int, cached: int = 0) -> int:
    return cost_of(Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached), PRICES)


async def books(gw, account: str, start: int, spent: int) -> None:
    wallet = await gw.storage.get_wallet(account)
    assert (wallet.locked, wallet.balance) == (0, start - spent)
    assert await gw.storage.verify_ledger() == []


async def only_row(gw, account: str):
    """The log of the account's one request. Polled, not read after flushed(): a request
    hands its log over after its settle and the deployment's finish, so a flush right after
    the settle (the callers wait for that) can come before it."""
    entries = await gw.storage.ledger_entries(account)
    holds = [e for e in entries if e.type == "hold"]
    assert len(holds) == 1
    return await gw.request_log(holds[0].request_id)


async def test_non_streaming_sdk_call_translates_and_bills_usage_metadata(database_url, tmp_path):
    async with (
        open_fake_vertex(thoughts_tokens=40, cached_tokens=3) as fake,
        open_gateway(database_url, deployments=[vertex_deployment(fake)]) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        completion = await in_thread(
            sdk(gw, key).chat.completions.create,
            model=MODEL,
            messages=MESSAGES,
            temperature=0.2,
            top_p=0.9,
            stop=["END"],
            reasoning_effort="low",
        )
        assert completion.object == "chat.completion" and completion.model == MODEL
        choice = completion.choices[0]
        assert choice.message.content == DEFAULT_REPLY  # the thought part is not content
        assert DEFAULT_THOUGHT not in json.dumps(completion.model_dump())
        assert choice.finish_reason == "stop" and choice.message.role == "assistant"
        answer = count_text(DEFAULT_REPLY)
        usage = completion.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT, answer + 40)
        assert usage.completion_tokens_details.reasoning_tokens == 40
        assert usage.prompt_tokens_details.cached_tokens == 3

        sent = fake.requests[-1]
        assert (
            sent.path
            == "/v1/projects/fake-project/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
        )
        assert sent.headers["x-goog-api-key"] == fake.api_key and "key" not in sent.query
        assert sent.json["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
        assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "Say something about foxes."}]}]
        assert sent.json["generationConfig"] == {
            "maxOutputTokens": 65536,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["END"],
            "thinkingConfig": {"thinkingBudget": 1024},
        }

        spent = cost(PROMPT, answer + 40, cached=3)
        await books(gw, account, start, spent)
        row = await only_row(gw, account)
        assert (row.status, row.provider, row.deployment, row.region) == ("ok", "vertex", "vertex-1", "us-central1")
        assert (row.prompt_tokens, row.completion_tokens, row.reasoning_tokens, row.cached_tokens, row.cost) == (
            PROMPT,
            answer + 40,
            40,
            3,
            spent,
        )

        config = tmp_path / "verify.toml"
        config.write_text(f'[storage]\nurl = "{database_url}"\n')
        verify = await trio.run_process(
            [str(Path(sys.executable).parent / "omixa"), "ledger", "verify", "--config", str(config)],
            capture_stderr=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stderr


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streaming_sdk_call_gets_openai_chunks_and_done(database_url, include_usage):
    async with (
        open_fake_vertex(thoughts_tokens=25, chunk_delay=0.001) as fake,
        open_gateway(database_url, deployments=[vertex_deployment(fake, location="global")]) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        extra = {"stream_options": {"include_usage": True}} if include_usage else {}

        def consume():
            stream = sdk(gw, key).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **extra)
            return list(stream)

        chunks = await in_thread(consume)
        assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == DEFAULT_REPLY
        assert chunks[0].choices[0].delta.role == "assistant"
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        answer = count_text(DEFAULT_REPLY) + 25
        usage_chunks = [c for c in chunks if c.usage is not None]
        if include_usage:
            assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
            assert (usage_chunks[0].usage.prompt_tokens, usage_chunks[0].usage.completion_tokens) == (PROMPT, answer)
            assert usage_chunks[0].usage.completion_tokens_details.reasoning_tokens == 25
        else:
            assert usage_chunks == []
        sent = fake.requests[-1]
        assert (
            sent.path
            == "/v1/projects/fake-project/locations/global/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
        )
        assert sent.query == {"alt": "sse"}
        await books(gw, account, start, cost(PROMPT, answer))
        row = await only_row(gw, account)
        assert (row.status, row.stream, row.prompt_tokens, row.completion_tokens) == ("ok", True, PROMPT, answer)


async def test_the_stream_ends_with_done_and_never_relays_thoughts(database_url):
    async with open_fake_vertex() as fake, open_gateway(database_url, deployments=[vertex_deployment(fake)]) as gw:
        _, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": MESSAGES, "stream": True, "n": 2},
            )
        body = response.content
        assert response.headers["content-type"].startswith("text/event-stream")
        assert body.endswith(b"data: [DONE]\n\n") and DEFAULT_THOUGHT.encode() not in body
        frames = [json.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]
        for index in (0, 1):
            text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames
                           if f["choices"] and f["choices"][0]["index"] == index)  # fmt: skip
            assert text == DEFAULT_REPLY
        assert fake.requests[-1].json["generationConfig"]["candidateCount"] == 2
        # The catalog says which efforts a Gemini model takes (all six, mapped to thinking).
        async with httpx.AsyncClient() as client:
            model = (
                await client.get(f"{gw.base_url}/models/{MODEL}", headers={"Authorization": f"Bearer {key}"})
            ).json()
        assert model["reasoning_efforts"] == ["none", "minimal", "low", "medium", "high", "xhigh"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_blocked_prompt_answers_content_filter_and_pays_the_prompt(database_url, stream):
    async with (
        open_fake_vertex(block_reason="PROHIBITED_CONTENT") as fake,
        open_gateway(database_url, deployments=[vertex_deployment(fake)]) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        client = sdk(gw, key)
        if stream:
            chunks = await in_thread(
                lambda: list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
            refusal = "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices)
        else:
            completion = await in_thread(client.chat.completions.create, model=MODEL, messages=MESSAGES)
            choice = completion.choices[0]
            assert (choice.message.content, choice.finish_reason) == ("", "content_filter")
            assert completion.usage.prompt_tokens == PROMPT and completion.usage.completion_tokens == 0
            refusal = choice.message.refusal
        assert "PROHIBITED_CONTENT" in refusal
        await books(gw, account, start, cost(PROMPT, 0))
        row = await only_row(gw, account)
        assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", PROMPT, 0)


async def test_max_tokens_maps_to_max_output_tokens_and_length(database_url):
    async with (
        open_fake_vertex(thoughts_tokens=4) as fake,
        open_gateway(database_url, deployments=[vertex_deployment(fake)]) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        completion = await in_thread(sdk(gw, key).chat.completions.create, model=MODEL, messages=MESSAGES, max_tokens=9)
        assert fake.requests[-1].json["generationConfig"] == {"maxOutputTokens": 9}
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 9  # 4 thought + 5 answer tokens: the cap holds both
        await books(gw, account, start, cost(PROMPT, 9))


async def test_vertex_rate_limit_fails_over_and_cools_the_deployment(database_url):
    async with (
        open_fake_vertex() as first,
        open_fake_vertex() as second,
        open_gateway(
            database_url,
            deployments=[
                vertex_deployment(first, name="v-a", weight=100.0),
                vertex_deployment(second, name="v-b", weight=0.001),
            ],  # fmt: skip
        ) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}
        first.fail_next(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [retry],
                                        "message": "Resource exhausted. Please try again later."}})  # fmt: skip
        sent = trio.current_time()
        completion = await in_thread(sdk(gw, key).chat.completions.create, model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == DEFAULT_REPLY
        assert len(first.requests) == 1 and len(second.requests) == 1
        snapshot = {a.config.name: a.snapshot for a in gw.engine.deployments}["v-a"]
        # 17 s from the 429, which came between sending and now.
        assert snapshot.health == "cooling" and sent + 17 <= snapshot.available_at <= trio.current_time() + 17
        await books(gw, account, start, cost(PROMPT, count_text(DEFAULT_REPLY)))


@pytest.mark.parametrize(
    ("status", "code", "http"),
    [
        (400, "invalid_request", 400),
        (403, "upstream_error", 502),
        (500, "upstream_error", 502),
        (429, "no_healthy_deployment", 503),
    ],  # fmt: skip
)
async def test_vertex_errors_map_to_the_envelope_and_cost_nothing(database_url, status, code, http):
    async with (
        open_fake_vertex() as fake,
        open_gateway(database_url, deployments=[vertex_deployment(fake)], upstream={"max_attempts": 1}) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        fake.fail_next(status, [{"error": {"code": status, "message": "Vertex says no.", "status": "X"}}])
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": MESSAGES, "stream": status == 500},
            )
        assert response.status_code == http, response.text
        assert response.json()["error"]["code"] == code
        if status == 400:
            assert "Vertex says no." in response.json()["error"]["message"]
        await books(gw, account, start, 0)


async def test_requests_gemini_cannot_take_are_refused_before_any_hold(database_url):
    async with open_fake_vertex() as fake, open_gateway(database_url, deployments=[vertex_deployment(fake)]) as gw:
        account, key = await gw.funded_account("1.00")
        bad = [
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
                ]
            },
            {"stop": ["a", "b", "c", "d", "e", "f"]},
            {"reasoning_effort": "extreme"},
            {"logprobs": True},
        ]
        async with httpx.AsyncClient() as client:
            for extra in bad:
                response = await client.post(
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": MESSAGES, **extra},
                )
                assert response.status_code == 400, extra
                assert response.json()["error"]["code"] == "invalid_request"
        assert fake.requests == []
        assert [e.type for e in await gw.storage.ledger_entries(account)] == ["top_up"]


async def test_a_client_leaving_a_vertex_stream_pays_prompt_and_delivered_tokens(database_url):
    async with (
        open_fake_vertex(chunks=6, stall_after=3) as fake,
        open_gateway(
            database_url,
            deployments=[vertex_deployment(fake)],
            streaming={"flush_padding_bytes": 0},
        ) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        delivered = ""
        async with httpx.AsyncClient() as client:
            async with client.stream(
                "POST",
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": MESSAGES, "stream": True},
            ) as response:
                buffer = b""
                async for chunk in response.aiter_raw():
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n\n")
                    for frame in complete:
                        if frame.startswith(b"data: {"):
                            choices = json.loads(frame[6:])["choices"]
                            delivered += "".join(c["delta"].get("content") or "" for c in choices)
                    if len(delivered) >= len("".join(DEFAULT_REPLY[: 3 * len(DEFAULT_REPLY) // 6])):
                        break
        with trio.fail_after(10):
            await fake.wait_until(lambda f: f.streams_disconnected >= 1)
            while (await gw.storage.get_wallet(account)).locked:
                await trio.sleep(0.02)
        assert delivered == DEFAULT_REPLY[: 3 * len(DEFAULT_REPLY) // 6]
        row = await only_row(gw, account)
        # Vertex reports usage only at the end: the prompt (counted offline) and the delivered
        # text are charged, as on Azure.
        assert row.status == "client_closed"
        from omixa.engine.tokens import count_chat_prompt

        prompt = count_chat_prompt({"messages": MESSAGES})
        assert (row.prompt_tokens, row.completion_tokens) == (prompt, count_text(delivered))
        await books(gw, account, start, cost(prompt, count_text(delivered)))


async def test_a_vertex_stream_fails_over_before_content(database_url):
    async with (
        open_fake_vertex() as first,
        open_fake_vertex() as second,
        open_gateway(
            database_url,
            deployments=[
                vertex_deployment(first, name="v-a", weight=100.0),
                vertex_deployment(second, name="v-b", weight=0.001),
            ],  # fmt: skip
        ) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        first.fail_next(503)
        chunks = await in_thread(
            lambda: list(sdk(gw, key).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_REPLY
        assert (len(first.requests), len(second.requests)) == (1, 1)
        await books(gw, account, start, cost(PROMPT, count_text(DEFAULT_REPLY)))
        row = await only_row(gw, account)
        assert (row.status, row.deployment) == ("ok", "v-b")
