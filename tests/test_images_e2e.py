"""Image generation end to end: the official openai SDK → Omixa → fake Azure (gpt-image-1),
held at the most the request can cost and billed from the answer's usage, or from the
catalog's per-image price when the answer has none; on both backends."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest
import trio
from fake_azure import PNG, open_fake_azure
from harness import azure_deployment, ledger_verify_cli, open_gateway

from omixa.engine.tokens import count_text

MODEL = "gpt-image-1"
PROMPT = "A black and white futuristic API dashboard"
TEXT_TOKENS = count_text(PROMPT)
# gpt-image-1 list prices in nano-dollars: per token (USD 5 / 40 per 1M) and per image.
INPUT, OUTPUT = 5_000, 40_000
PER_IMAGE = {("low", "1024x1024"): 11_000_000, ("medium", "1024x1024"): 42_000_000,
             ("high", "1024x1536"): 250_000_000}  # fmt: skip
TOKENS = {("low", "1024x1024"): 272, ("medium", "1024x1024"): 1056, ("high", "1024x1536"): 6240}


def image_deployments(fake) -> list[dict]:
    return [
        azure_deployment(fake, name="img-1", model=MODEL, api_version="2025-04-01-preview"),
        azure_deployment(fake, name="chat-1", model="gpt-4o-mini"),
    ]


async def test_sdk_images_are_held_at_the_worst_case_and_billed_from_usage(database_url, tmp_path):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, deployments=image_deployments(fake)) as gw:
        account, key = await gw.funded_account("5.00")
        start = (await gw.storage.get_wallet(account)).balance
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        result = await trio.to_thread.run_sync(lambda: client.images.generate(
            model=MODEL, prompt=PROMPT, n=2, size="1024x1024", quality="low"))  # fmt: skip
        assert [base64.b64decode(d.b64_json) for d in result.data] == [PNG, PNG]
        assert result.usage.output_tokens == 2 * 272
        sent = fake.requests[-1]
        assert sent.operation == "images/generations" and sent.query["api-version"] == "2025-04-01-preview"
        assert sent.json == {"prompt": PROMPT, "n": 2, "size": "1024x1024", "quality": "low"}

        entries = await gw.settled_entries(account)
        assert [e.type for e in entries] == ["top_up", "hold", "charge", "release"]
        hold, charge = entries[1].amount, entries[2].amount
        # The hold: the larger of the token worst case and the per-image price, for 2 images.
        assert hold == max(TEXT_TOKENS * INPUT + 2 * 272 * OUTPUT, TEXT_TOKENS * INPUT + 2 * 11_000_000)
        assert charge == TEXT_TOKENS * INPUT + 2 * 272 * OUTPUT
        assert (await gw.storage.get_wallet(account)).balance == start - charge
        row = await gw.request_log(entries[1].request_id)
        assert (row.model, row.prompt_tokens, row.completion_tokens, row.cost) == (MODEL, TEXT_TOKENS, 544, charge)

        await ledger_verify_cli(database_url, tmp_path)


async def test_without_usage_the_catalog_price_per_image_is_charged(database_url):
    async with (
        open_fake_azure(image_usage=False) as fake,
        open_gateway(database_url, fake, deployments=image_deployments(fake)) as gw,
    ):
        account, key = await gw.funded_account("5.00")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            # quality and size "auto": the hold covers the dearest option (high, 1536 tall);
            # the fake answers medium 1024x1024 and says so.
            response = await client.post(f"{gw.base_url}/images/generations", json={"model": MODEL, "prompt": PROMPT})
        assert response.status_code == 200, response.text
        assert "usage" not in response.json() and response.json()["quality"] == "medium"
        entries = await gw.settled_entries(account)
        hold, charge = entries[1].amount, entries[2].amount
        assert hold == max(TEXT_TOKENS * INPUT + 6240 * OUTPUT, TEXT_TOKENS * INPUT + 250_000_000)
        assert charge == TEXT_TOKENS * INPUT + 42_000_000
        assert await gw.storage.verify_ledger() == []


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"prompt": ""}, "'prompt'"),
        ({"prompt": None}, "'prompt'"),
        ({"n": 0}, "'n'"),
        ({"n": 11}, "'n'"),
        ({"n": True}, "'n'"),
        ({"size": "512x512"}, "'size'"),
        ({"quality": "hd"}, "'quality'"),
        ({"response_format": "url"}, "b64_json"),
        ({"stream": True}, "stream"),
        ({"model": "gpt-4o-mini"}, "chat model"),
    ],
)
async def test_bad_image_requests_change_nothing(tmp_path, extra, words):
    async with (
        open_fake_azure() as fake,
        open_gateway(f"sqlite:///{tmp_path / 'i.db'}", fake, deployments=image_deployments(fake)) as gw,
    ):
        account, key = await gw.funded_account("5.00")
        status, error = await gw.refused(key, "/images/generations", {"model": MODEL, "prompt": PROMPT, **extra})
        assert status == 400 and words in error["message"]
        assert fake.requests == []
        assert [e.type for e in await gw.storage.ledger_entries(account)] == ["top_up"]


async def test_an_image_request_the_wallet_cannot_cover_is_402_and_an_upstream_refusal_costs_nothing(tmp_path):
    async with (
        open_fake_azure() as fake,
        open_gateway(f"sqlite:///{tmp_path / 'i.db'}", fake, deployments=image_deployments(fake)) as gw,
    ):
        account, key = await gw.funded_account("0.10")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            url = f"{gw.base_url}/images/generations"
            poor = await client.post(url, json={"model": MODEL, "prompt": PROMPT, "quality": "high"})
            assert poor.status_code == 402 and poor.json()["error"]["code"] == "insufficient_balance"
            assert fake.requests == []
            fake.fail_next(
                400, {"error": {"code": "content_policy_violation", "message": "Blocked by the safety system."}}
            )
            refused = await client.post(url, json={"model": MODEL, "prompt": PROMPT, "quality": "low"})
        assert refused.status_code == 400
        assert "Blocked by the safety system." in refused.json()["error"]["message"]
        assert refused.json()["error"]["code"] == "content_policy_violation"  # Azure's own
        entries = await gw.settled_entries(account)
        assert [e.type for e in entries] == ["top_up", "hold", "release"]
        assert await gw.storage.verify_ledger() == []


async def test_the_simulator_serves_images_billed_per_image(database_url):
    deployments = [{"name": "sim", "model": MODEL, "provider": "simulator", "sim_first_token_ms": 0}]
    async with open_gateway(database_url, deployments=deployments) as gw:
        account, key = await gw.funded_account("5.00")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        result = await trio.to_thread.run_sync(lambda: client.images.generate(
            model=MODEL, prompt=PROMPT, quality="low", size="1024x1024"))  # fmt: skip
        assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG")
        entries = await gw.settled_entries(account)
        # No usage from the simulator: the prompt at the input price plus the catalog's image price.
        assert [e.amount for e in entries if e.type == "charge"] == [TEXT_TOKENS * INPUT + 11_000_000]
        assert await gw.storage.verify_ledger() == []


async def test_an_sdk_call_without_a_model_gets_the_catalogs_image_model(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, deployments=image_deployments(fake)) as gw:
        account, key = await gw.funded_account("5.00")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        result = await trio.to_thread.run_sync(lambda: client.images.generate(prompt=PROMPT, quality="low"))
        assert [base64.b64decode(d.b64_json) for d in result.data] == [PNG]
        assert fake.requests[-1].deployment == f"{MODEL}-dz"
        entries = await gw.settled_entries(account)
        row = await gw.request_log(entries[1].request_id)
        assert (row.model, row.deployment) == (MODEL, "img-1")
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:  # no image model here
        account, key = await gw.funded_account("5.00")
        status, error = await gw.refused(key, "/images/generations", {"prompt": PROMPT})
        assert (status, error["code"]) == (404, "model_not_found")
