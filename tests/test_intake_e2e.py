"""Taking model calls in: cheap limits before the body, every call counted, large bodies off
the event loop, and rate-limit headers for every key (engine.intake, engine.keylimits)."""

from __future__ import annotations

import json
import statistics
import time

import httpx
import pytest
import trio
from fake_azure import open_fake_azure
from harness import MODEL, azure_deployment, open_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


def big_prompt_body(size: int) -> bytes:
    """A chat body of about ``size`` bytes whose prompt is far too long for any model."""
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    text = (words * (size // len(words) + 1))[: size - 120]
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()


async def chat(client: httpx.AsyncClient, gw, key: str, content: bytes | None = None) -> httpx.Response:
    body = (
        content if content is not None else json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 5}).encode()
    )
    return await client.post(
        f"{gw.base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


@pytest.fixture
async def gateway(tmp_path):
    async with (
        open_fake_azure() as fake,
        open_gateway(
            f"sqlite:///{tmp_path / 'omixa.db'}",
            fake,
            deployments=[azure_deployment(fake, rpm=100, tpm=50_000)],
        ) as gw,
    ):
        yield gw


async def test_refused_calls_count_against_the_keys_requests_per_minute(gateway):
    """A bad body, a model that does not exist and an empty wallet each use up one request."""
    gw = gateway
    account, _ = await gw.funded_account("1.00")
    key = (await gw.engine.accounts.create_key(account, rpm=4)).secret
    async with httpx.AsyncClient() as client:
        assert (await chat(client, gw, key, b"{not json")).status_code == 400
        assert (await chat(client, gw, key, b'{"model": "no-such-model", "messages": []}')).status_code == 404
        assert (await chat(client, gw, key, b'{"model": "gpt-4o-mini", "messages": "x"}')).status_code == 400
        assert (await chat(client, gw, key)).status_code == 200
        refused = await chat(client, gw, key)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) <= 60


async def test_a_large_body_from_an_empty_wallet_is_refused_before_it_is_read_into_tokens(gateway):
    """402 (not the 400 that counting its tokens would give), and 429 past the key's rpm."""
    gw = gateway
    account, _ = await gw.funded_account("0")
    key = (await gw.engine.accounts.create_key(account, rpm=5)).secret
    body = big_prompt_body(1024 * 1024)
    async with httpx.AsyncClient(timeout=30) as client:
        statuses = [(await chat(client, gw, key, body)).status_code for _ in range(8)]
    assert statuses == [402] * 5 + [429] * 3


async def test_the_largest_bodies_do_not_stall_other_keys(gateway):
    """Two clients send the largest accepted prompts (tokenized, then refused as too long for
    the model) while another key reads its wallet: those reads stay quick, because the body
    is decoded and counted in a worker thread without the GIL. Before, each large body held
    the event loop for about 100-200 ms. The bound is generous; bench/ has the figures."""
    gw = gateway
    _, heavy = await gw.funded_account("10.00")
    _, light = await gw.funded_account("1.00")
    body = big_prompt_body(gw.engine.config.server.max_body_bytes - 1024)
    latencies: list[float] = []
    refused = 0

    async def flood(client: httpx.AsyncClient) -> None:
        nonlocal refused
        while True:
            response = await chat(client, gw, heavy, body)
            assert response.status_code == 400, response.text  # longer than the context window
            refused += 1

    async with httpx.AsyncClient(timeout=60) as flooder, httpx.AsyncClient() as reader:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(flood, flooder)
            await trio.sleep(0.3)
            for _ in range(60):
                started = time.perf_counter()
                wallet = await reader.get(f"{gw.base_url}/wallet", headers={"Authorization": f"Bearer {light}"})
                latencies.append(time.perf_counter() - started)
                assert wallet.status_code == 200
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    assert refused >= 2
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95)]
    assert p95 < 0.06, f"wallet reads p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


async def test_every_key_gets_rate_limit_headers_on_model_calls(gateway):
    """A dimension the key does not limit reports the model's room over its deployments
    (here one deployment: 100 requests and 50,000 tokens a minute)."""
    gw = gateway
    account, _ = await gw.funded_account("1.00")
    unlimited = (await gw.engine.accounts.create_key(account, rpm=0, tpm=0)).secret
    default = (await gw.engine.accounts.create_key(account)).secret  # [limits] key_rpm 600, no tpm
    async with httpx.AsyncClient() as client:
        first = await chat(client, gw, unlimited)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "100"
        assert first.headers["x-ratelimit-remaining-requests"] == "99"
        assert first.headers["x-ratelimit-limit-tokens"] == "50000"
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 50_000
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        second = await chat(client, gw, default)
        assert second.headers["x-ratelimit-limit-requests"] == "600"  # the key's own limit
        assert second.headers["x-ratelimit-limit-tokens"] == "50000"  # the model's
        assert second.headers["x-ratelimit-remaining-requests"] == "599"
