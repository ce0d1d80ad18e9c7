"""Embeddings end to end: the official openai SDK → Omixa → fake Azure, billed exactly, on
both backends. The hold is the exact input price, so a paid call leaves no release row."""

from __future__ import annotations

import httpx
import openai
import pytest
import trio
from fake_azure import open_fake_azure
from harness import azure_deployment, ledger_verify_cli, open_gateway

from omixa.engine.catalog import load_catalog
from omixa.engine.tokens import count_text

SMALL = "text-embedding-3-small"
CATALOG = load_catalog()
SMALL_INFO = CATALOG.get(SMALL)
assert SMALL_INFO is not None  # the shipped catalog lists it
PER_TOKEN = SMALL_INFO.prices.input // 1_000_000  # 20 nano-dollars a token


def embedding_deployments(fake) -> list[dict]:
    return [
        azure_deployment(fake, name="emb-1", model=SMALL),
        azure_deployment(fake, name="ada-1", model="text-embedding-ada-002"),
        azure_deployment(fake, name="chat-1", model="gpt-4o-mini"),
    ]


async def in_thread(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_sdk_embeddings_of_every_input_shape_are_billed_exactly(database_url, tmp_path):
    async with (
        open_fake_azure() as fake,
        open_gateway(database_url, fake, deployments=embedding_deployments(fake)) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        text = "Knowledge base text"
        cases = [
            ({"input": text}, count_text(text, "cl100k_base"), 1, 1536),
            ({"input": [text, "and more of it"], "dimensions": 256},
             count_text(text, "cl100k_base") + count_text("and more of it", "cl100k_base"), 2, 256),
            ({"input": [101, 102, 103]}, 3, 1, 1536),
            ({"input": [[1, 2, 3], [4, 5]], "encoding_format": "float"}, 5, 2, 1536),
        ]  # fmt: skip
        spent = 0
        for extra, tokens, count, dims in cases:
            result = await in_thread(client.embeddings.create, model=SMALL, **extra)
            assert [len(d.embedding) for d in result.data] == [dims] * count
            assert result.usage.prompt_tokens == tokens
            sent = fake.requests[-1]
            assert sent.operation == "embeddings" and sent.deployment == f"{SMALL}-dz"
            assert "model" not in sent.json and sent.json["input"] == extra["input"]
            # The SDK asks for base64 unless told otherwise; the answer is relayed as is.
            assert sent.json["encoding_format"] == extra.get("encoding_format", "base64")
            spent += tokens * PER_TOKEN

        wallet = await gw.storage.get_wallet(account)
        assert (wallet.balance, wallet.locked) == (start - spent, 0)
        entries = await gw.storage.ledger_entries(account)
        assert [e.type for e in entries] == ["top_up"] + ["hold", "charge"] * len(cases)
        holds = [e.amount for e in entries if e.type == "hold"]
        charges = [e.amount for e in entries if e.type == "charge"]
        assert holds == charges == [tokens * PER_TOKEN for _, tokens, _, _ in cases]
        row = await gw.request_log(entries[1].request_id)
        assert (row.model, row.status, row.stream) == (SMALL, "ok", False)
        assert (row.prompt_tokens, row.completion_tokens, row.cost) == (cases[0][1], 0, cases[0][1] * PER_TOKEN)
        assert row.deployment == "emb-1"
        await ledger_verify_cli(database_url, tmp_path)


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"model": SMALL}, 400, "'input' is required"),
        ({"model": SMALL, "input": ""}, 400, "'input'"),
        ({"model": SMALL, "input": []}, 400, "'input'"),
        ({"model": SMALL, "input": ["a", [1, 2]]}, 400, "must not mix"),
        ({"model": SMALL, "input": [[1, 2], []]}, 400, "input[1]"),
        ({"model": SMALL, "input": [-1]}, 400, "'input'"),
        ({"model": SMALL, "input": [1.5]}, 400, "'input'"),
        ({"model": SMALL, "input": "x", "dimensions": 0}, 400, "'dimensions'"),
        ({"model": SMALL, "input": "x", "dimensions": 1537}, 400, "'dimensions'"),
        ({"model": "text-embedding-ada-002", "input": "x", "dimensions": 512}, 400, "'dimensions'"),
        ({"model": SMALL, "input": "x", "encoding_format": "int8"}, 400, "'encoding_format'"),
        ({"model": SMALL, "input": list(range(8192))}, 400, "at most 8191"),
        ({"model": SMALL, "input": [[1]] * 2049}, 400, "at most 2048"),
        ({"model": "gpt-4o-mini", "input": "x"}, 400, "chat model"),
        ({"model": "text-embedding-3-large", "input": "x"}, 404, "does not exist or is not enabled"),
        ({"input": "x"}, 400, "'model'"),
    ],
)
async def test_bad_embedding_requests_change_nothing(tmp_path, body, status, words):
    async with (
        open_fake_azure() as fake,
        open_gateway(f"sqlite:///{tmp_path / 'e.db'}", fake, deployments=embedding_deployments(fake)) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        got, error = await gw.refused(key, "/embeddings", body)
        assert got == status and words in error["message"]
        assert fake.requests == []
        assert [e.type for e in await gw.storage.ledger_entries(account)] == ["top_up"]


async def test_embedding_models_are_refused_on_chat_and_need_a_key(tmp_path):
    async with (
        open_fake_azure() as fake,
        open_gateway(f"sqlite:///{tmp_path / 'e.db'}", fake, deployments=embedding_deployments(fake)) as gw,
    ):
        _, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient() as client:
            anonymous = await client.post(f"{gw.base_url}/embeddings", json={"model": SMALL, "input": "x"})
            assert anonymous.status_code == 401
            chat = await client.post(
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": SMALL, "messages": [{"role": "user", "content": "x"}]},
            )
        assert chat.status_code == 400 and "/embeddings" in chat.json()["error"]["message"]
        assert fake.requests == []


async def test_embeddings_fail_over_and_count_against_the_key(database_url):
    async with (
        open_fake_azure() as fake,
        open_gateway(
            database_url,
            fake,
            deployments=[
                azure_deployment(fake, name="a", model=SMALL, deployment="a-dz"),
                azure_deployment(fake, name="b", model=SMALL, deployment="b-dz"),
            ],
            limits={"key_rpm": 2},
        ) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        fake.fail_next(500)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            first = await client.post(f"{gw.base_url}/embeddings", json={"model": SMALL, "input": [1, 2, 3, 4]})
            assert first.status_code == 200, first.text
            assert first.headers["x-ratelimit-remaining-requests"] == "1"
            assert [r.deployment for r in fake.requests][0] != fake.requests[1].deployment
            await client.post(f"{gw.base_url}/embeddings", json={"model": SMALL, "input": [1]})
            third = await client.post(f"{gw.base_url}/embeddings", json={"model": SMALL, "input": [1]})
        assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limited"
        charges = [e.amount for e in await gw.storage.ledger_entries(account) if e.type == "charge"]
        assert charges == [4 * PER_TOKEN, 1 * PER_TOKEN]
        assert await gw.storage.verify_ledger() == []


async def test_the_simulator_serves_embeddings_billed_from_its_usage(database_url):
    deployments = [{"name": "sim", "model": SMALL, "provider": "simulator", "sim_first_token_ms": 0}]
    async with open_gateway(database_url, deployments=deployments) as gw:
        account, key = await gw.funded_account("1.00")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        texts = ["one input", "and another one"]
        result = await in_thread(client.embeddings.create, model=SMALL, input=texts, dimensions=64)
        assert [len(d.embedding) for d in result.data] == [64, 64]
        tokens = sum(count_text(t, "cl100k_base") for t in texts)
        assert result.usage.prompt_tokens == tokens
        entries = await gw.settled_entries(account)
        assert [e.amount for e in entries if e.type == "charge"] == [tokens * PER_TOKEN]
        assert await gw.storage.verify_ledger() == []
