"""End to end: the official openai SDK → real Hypercorn → actors → fake Azure, on both backends.

Each test checks money exactly: the catalog price of the upstream-reported tokens, holds
released, a request log row, and a ledger that verifies.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import trio
from fake_azure import DEFAULT_REPLY, open_fake_azure
from harness import MODEL, ledger_verify_cli, open_gateway

from omixa.engine.catalog import cost_of, load_catalog
from omixa.engine.money import format_usd
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import Usage

MODEL_INFO = load_catalog().get(MODEL)
assert MODEL_INFO is not None  # the shipped catalog lists it
PRICES = MODEL_INFO.prices
MESSAGES = [{"role": "user", "content": "Say something about foxes."}]


def expected_cost(prompt_tokens: int, completion_tokens: int) -> int:
    return cost_of(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens), PRICES)


def sdk(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


async def in_thread(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def assert_books_clean(gw, account_id: str, spent: int, start: int) -> None:
    wallet = await gw.storage.get_wallet(account_id)
    assert wallet.locked == 0, "every hold is released"
    assert wallet.balance == start - spent
    assert await gw.storage.verify_ledger() == []


async def test_non_streaming_sdk_call_charges_exact_catalog_price(database_url, caplog, tmp_path):
    caplog.set_level("INFO", logger="omixa.request")
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        client = sdk(gw, key)
        completion = await in_thread(client.chat.completions.create, model=MODEL, messages=MESSAGES)

        assert completion.choices[0].message.content == DEFAULT_REPLY
        prompt = count_chat_prompt({"messages": MESSAGES})
        completion_tokens = count_text(DEFAULT_REPLY)
        assert completion.usage.prompt_tokens == prompt
        assert completion.usage.completion_tokens == completion_tokens
        # The upstream got an explicit cap equal to what the hold covers.
        sent = fake.requests[-1]
        assert sent.headers["api-key"] == fake.api_key
        assert sent.json["max_tokens"] == 16384
        assert sent.path == f"/openai/deployments/{MODEL}-dz/chat/completions"

        cost = expected_cost(prompt, completion_tokens)
        await assert_books_clean(gw, account, cost, start)
        await gw.flushed()
        entries = await gw.storage.ledger_entries(account)
        assert [e.type for e in entries] == ["top_up", "hold", "charge", "release"]
        request_id = entries[1].request_id
        row = await gw.storage.get_request_log(request_id)
        assert row.status == "ok" and row.stream is False
        assert (row.prompt_tokens, row.completion_tokens, row.cost) == (prompt, completion_tokens, cost)
        assert row.latency_ms >= 0 and row.deployment == "eastus-1" and row.region == "eastus"
        # One structured line per request: ids, tokens and cost, never the key or the prompt.
        lines = [r.getMessage() for r in caplog.records if r.name == "omixa.request"]
        assert len(lines) == 1
        assert f"id={request_id}" in lines[0] and f"cost_nano={cost}" in lines[0]
        assert key not in lines[0] and "foxes" not in lines[0]

        # The operator's check, as a separate process on the same database.
        await ledger_verify_cli(database_url, tmp_path)

        wallet = await in_thread(httpx.get, f"{gw.base_url}/wallet", headers={"Authorization": f"Bearer {key}"})
        assert wallet.json() == {
            "object": "wallet",
            "balance": format_usd(start - cost),
            "locked_balance": "0.00",
            "available": format_usd(start - cost),
            "currency": "USD",
        }


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streaming_sdk_call_relays_frames_and_charges_usage(database_url, include_usage):
    async with open_fake_azure(chunk_delay=0.001) as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        client = sdk(gw, key)
        extra = {"stream_options": {"include_usage": True}} if include_usage else {}

        def consume():
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **extra)
            return list(stream)

        chunks = await in_thread(consume)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == DEFAULT_REPLY
        # The prompt-filter frame (empty choices) never reaches the client; the usage frame
        # only when asked for.
        empty = [c for c in chunks if not c.choices]
        assert len(empty) == (1 if include_usage else 0)
        prompt, completion_tokens = count_chat_prompt({"messages": MESSAGES}), count_text(DEFAULT_REPLY)
        if include_usage:
            assert empty[0].usage.completion_tokens == completion_tokens
        # Upstream always gets include_usage, so billing never depends on the client.
        assert fake.requests[-1].json["stream_options"] == {"include_usage": True}
        assert fake.streams_finished == 1

        cost = expected_cost(prompt, completion_tokens)
        await assert_books_clean(gw, account, cost, start)
        await gw.flushed()
        entries = await gw.storage.ledger_entries(account)
        row = await gw.storage.get_request_log(entries[1].request_id)
        assert row.status == "ok" and row.stream is True and row.cost == cost
        assert row.ttft_ms is not None


async def test_stream_headers_and_raw_frames(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient() as client:
            async with client.stream(
                "POST",
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": MESSAGES, "stream": True},
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-cache, no-transform"
                assert response.headers["x-accel-buffering"] == "no"
                assert response.headers["alt-svc"] == "clear"
                assert response.headers["x-request-id"].startswith("req_")
                body = b"".join([chunk async for chunk in response.aiter_raw()])
        events = [e for e in body.split(b"\n\n") if e]
        assert events[0].startswith(b":")  # the flush padding comes first
        assert events[-1] == b"data: [DONE]"
        for event in events[1:-1]:
            data = json.loads(event.removeprefix(b"data: "))
            assert data["object"] == "chat.completion.chunk" and data["choices"]


async def test_concurrent_requests_never_overdraw(database_url):
    """200 concurrent requests, money for exactly 100 holds: none served unpaid, balance >= 0.

    The upstream answers only once every request has either reached it or been refused, so
    all the holds come before the settles that would free money for more requests."""
    max_tokens = 1000
    prompt = count_chat_prompt({"messages": MESSAGES})
    hold = expected_cost(prompt, max_tokens)
    gate = trio.Event()
    async with open_fake_azure(gate=gate) as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("0")
        await gw.storage.top_up(account, hold * 100 + hold // 2)
        start = (await gw.storage.get_wallet(account)).balance
        statuses: list[int] = []
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:

            async def one() -> None:
                response = await client.post(
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens},
                )
                if response.status_code == 402:
                    assert response.json()["error"]["code"] == "insufficient_balance"
                statuses.append(response.status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(one)
                with trio.fail_after(60):
                    while len(fake.requests) + statuses.count(402) < 200:
                        await trio.sleep(0.01)
                gate.set()

        served = statuses.count(200)
        assert statuses.count(402) == 200 - served
        assert served == 100  # 100 holds fit; the rest found too little left
        assert len(fake.requests) == served  # nothing went upstream unpaid
        cost = expected_cost(prompt, count_text(DEFAULT_REPLY))
        await assert_books_clean(gw, account, cost * served, start)
        wallet = await gw.storage.get_wallet(account)
        assert wallet.balance >= 0


async def test_client_dropping_a_stream_closes_upstream_and_charges_delivered(database_url):
    reply = " ".join(f"word{i}" for i in range(200))
    async with open_fake_azure(reply=reply, chunk_delay=0.02) as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        received = b""
        async with httpx.AsyncClient() as client:
            async with client.stream(
                "POST",
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": MESSAGES, "stream": True},
            ) as response:
                async for chunk in response.aiter_raw():
                    received += chunk
                    if received.count(b"\n\n") >= 6:
                        break
        with trio.fail_after(5):
            await fake.wait_disconnected()
        assert fake.streams_finished == 0

        with trio.fail_after(5):
            while (await gw.storage.get_wallet(account)).locked:
                await trio.sleep(0.01)
        entries = await gw.storage.ledger_entries(account)
        row = await gw.request_log(entries[1].request_id)
        assert row.status == "client_closed"
        prompt = count_chat_prompt({"messages": MESSAGES})
        assert row.prompt_tokens == prompt
        full = count_text(reply)
        assert 0 < row.completion_tokens < full
        assert row.cost == expected_cost(prompt, row.completion_tokens)
        await assert_books_clean(gw, account, row.cost, start)
