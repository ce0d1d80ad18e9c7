"""The real Node clients against a real Omixa: the official ``openai`` SDK and the Vercel AI
SDK's OpenAI provider (``createOpenAI``), each run by Node.js as an application runs them.

The scripts live in tests/node (``openai_sdk.mjs``, ``ai_sdk.mjs``) with their exact pins in
package.json and package-lock.json, which also pins a Node.js 22 binary (the ``node`` package)
so the SDKs run on the Node they support whatever ``node`` the machine has;
``npm ci --prefix tests/node`` installs it all. Each script prints its results as one JSON
object; these tests check them against what the fake upstream answered, what it was sent,
and the money: each charge is the upstream's usage at the catalog price, and the ledger
verifies. The last test runs the AI SDK against ``omixa demo`` itself.

Without tests/node/node_modules these tests are skipped with "Node.js not found";
``.ci/run`` installs Node.js and npm when missing, runs ``npm ci`` and fails if they were
skipped.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from demo_helpers import open_demo
from fake_azure import DEFAULT_REPLY, open_fake_azure
from fake_azure_responses import input_text
from fake_vertex import DEFAULT_REPLY as GEMINI_REPLY
from fake_vertex import open_fake_vertex
from harness import MODEL, azure_deployment, open_gateway
from test_vertex_e2e import MODEL as GEMINI
from test_vertex_e2e import vertex_deployment

from omixa.engine.catalog import cost_of, load_catalog
from omixa.engine.images import image_cost
from omixa.engine.money import parse_usd
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import Usage

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE = NODE_DIR / "node_modules" / ".bin" / "node"
PACKAGES = ("openai", "ai", "@ai-sdk/openai")
INSTALLED = NODE.exists() and all((NODE_DIR / "node_modules" / p / "package.json").exists() for p in PACKAGES)
pytestmark = pytest.mark.skipif(
    not INSTALLED, reason="Node.js not found in tests/node/node_modules (npm ci --prefix tests/node)"
)

CATALOG = load_catalog()
PROMPT = "Say something about foxes."  # the scripts' default prompt
EMBEDDING_MODEL, IMAGE_MODEL = "text-embedding-3-small", "gpt-image-1"
CHAT_PATH = f"/openai/deployments/{MODEL}-dz/chat/completions"
RESPONSES_PATH = "/openai/v1/responses"
OMIXA = str(Path(sys.executable).parent / "omixa")


async def run_node(script: str, base_url: str, key: str, *steps: str, **env: str) -> dict[str, Any]:
    """Run ``tests/node/<script>`` with these steps; its JSON results, failing the test (with
    what the script printed) when it exits non-zero."""
    environ = {**os.environ, "OMIXA_BASE_URL": base_url, "OMIXA_API_KEY": key, **env}
    with trio.fail_after(60):
        done = await trio.run_process(
            [str(NODE), str(NODE_DIR / script), *steps],
            cwd=NODE_DIR,
            env=environ,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out, err = done.stdout.decode(), done.stderr.decode()
    # stdout names the failed step and its error; stderr's tail has the SDK's own report.
    assert done.returncode == 0, f"{script} {' '.join(steps)} exited {done.returncode}:\n{out}\n{err[-2000:]}"
    results = json.loads(out)
    assert list(results) == list(steps)
    return results


async def charges(gw, account: str, start: int) -> list:
    """The account's request log rows, one per charge in ledger order, after checking the
    money: each charge is its row's tokens at the catalog prices of its model, no hold is
    left, the balance is what the charges left, and the ledger verifies."""
    entries = await gw.settled_entries(account)
    rows = []
    for entry in (e for e in entries if e.type == "charge"):
        row = await gw.request_log(entry.request_id)
        model = CATALOG.get(row.model)
        assert model is not None
        usage = Usage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cached_tokens=row.cached_tokens,
            reasoning_tokens=row.reasoning_tokens,
        )
        price = image_cost if model.modality == "image" else cost_of
        assert entry.amount == row.cost == price(usage, model.prices) > 0
        rows.append(row)
    wallet = await gw.storage.get_wallet(account)
    assert (wallet.locked, wallet.balance) == (0, start - sum(r.cost for r in rows))
    assert await gw.storage.verify_ledger() == []
    return rows


def tokens(row) -> tuple[int, int]:
    return row.prompt_tokens, row.completion_tokens


def float32(values: list[float]) -> list[float]:
    """``values`` as the float32 numbers a base64 embedding carries."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


async def test_the_ai_sdk_default_provider_speaks_the_responses_api(database_url):
    async with (
        open_fake_azure(chunk_delay=0.001) as fake,
        open_gateway(
            database_url,
            deployments=[
                azure_deployment(fake, name="chat", model=MODEL),
                azure_deployment(fake, name="embed", model=EMBEDDING_MODEL),
            ],
        ) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        steps = ("generate", "stream", "chat-generate", "chat-stream", "embed", "bad-key")
        got = await run_node("ai_sdk.mjs", gw.base_url, key, *steps)

        # createOpenAI(...)(model): the Responses API, JSON then typed events.
        generated, streamed = got["generate"], got["stream"]
        sent = [r for r in fake.requests if r.operation == "responses"]
        assert [(r.path, r.json.get("stream")) for r in sent] == [(RESPONSES_PATH, None), (RESPONSES_PATH, True)]
        assert all(r.json["model"] == f"{MODEL}-dz" and input_text(r.json) == PROMPT for r in sent)
        prompt = count_text(PROMPT)
        for result in (generated, streamed):
            assert (result["text"], result["finishReason"]) == (DEFAULT_REPLY, "stop")
            assert result["usage"] == {"inputTokens": prompt, "outputTokens": count_text(DEFAULT_REPLY)}
            assert result["responseId"] in fake.stored  # the upstream's own id, as it stores it
        assert streamed["deltas"] == len(fake._pieces(DEFAULT_REPLY))

        # .chat(model): chat completions, JSON then SSE.
        sent = [r for r in fake.requests if r.operation == "chat/completions"]
        assert [(r.path, r.json.get("stream")) for r in sent] == [(CHAT_PATH, None), (CHAT_PATH, True)]
        chat_prompt = count_chat_prompt({"messages": [{"role": "user", "content": PROMPT}]})
        for result in (got["chat-generate"], got["chat-stream"]):
            assert (result["text"], result["finishReason"]) == (DEFAULT_REPLY, "stop")
            assert result["usage"] == {"inputTokens": chat_prompt, "outputTokens": count_text(DEFAULT_REPLY)}

        embedded = got["embed"]
        assert embedded == {"dimensions": fake.embedding_dims, "usage": {"tokens": count_text(PROMPT, "cl100k_base")}}

        refused = got["bad-key"]
        assert (refused["statusCode"], refused["isRetryable"]) == (401, False)
        assert refused["url"] == f"{gw.base_url}/responses"
        error = refused["data"]["error"]
        assert (error["code"], error["type"], error["message"]) == (
            "invalid_api_key",
            "invalid_request_error",
            refused["message"],
        )

        rows = await charges(gw, account, start)
        assert [(r.model, r.stream, r.status) for r in rows] == [
            (MODEL, False, "ok"),
            (MODEL, True, "ok"),
            (MODEL, False, "ok"),
            (MODEL, True, "ok"),
            (EMBEDDING_MODEL, False, "ok"),
        ]
        reported = [got[s]["usage"] for s in steps[:4]]
        assert [tokens(r) for r in rows[:4]] == [(u["inputTokens"], u["outputTokens"]) for u in reported]
        assert tokens(rows[4]) == (embedded["usage"]["tokens"], 0)


async def test_the_ai_sdk_sends_an_earlier_turn_back_by_reference_to_where_it_lives(database_url):
    async with (
        open_fake_azure(reply="East says hello.") as east,
        open_fake_azure(reply="West says hello.") as west,
        open_gateway(
            database_url, deployments=[azure_deployment(east, name="east"), azure_deployment(west, name="west")]
        ) as gw,
    ):
        _, key = await gw.funded_account("10.00")
        for _ in range(3):  # with two equal deployments, an unpinned second turn would miss often
            got = (await run_node("ai_sdk.mjs", gw.base_url, key, "multi-turn"))["multi-turn"]
            home = east if got["first"]["responseId"] in east.stored else west
            second = home.requests[-1].json
            references = [item for item in second["input"] if item.get("type") == "item_reference"]
            assert references, second["input"]  # the SDK's default (store: true) sends the answer by id
            assert got["second"]["responseId"] in home.stored and got["second"]["text"] == home.reply


async def test_the_ai_sdk_default_provider_on_vertex_gemini(database_url):
    async with (
        open_fake_vertex() as fake,
        open_gateway(database_url, deployments=[vertex_deployment(fake)]) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        steps = ("generate", "stream", "chat-generate", "chat-stream")
        got = await run_node("ai_sdk.mjs", gw.base_url, key, *steps, OMIXA_MODEL=GEMINI)

        for step in steps:
            assert (got[step]["text"], got[step]["finishReason"]) == (GEMINI_REPLY, "stop"), step
        paths = [r.path.rsplit(":", 1)[-1] for r in fake.requests if r.path != "/token"]
        assert paths == ["generateContent", "streamGenerateContent"] * 2
        contents = [r.json["contents"] for r in fake.requests if r.path != "/token"]
        assert all(c == [{"role": "user", "parts": [{"text": PROMPT}]}] for c in contents)
        rows = await charges(gw, account, start)
        assert [(r.model, r.stream) for r in rows] == [(GEMINI, False), (GEMINI, True)] * 2
        assert [tokens(r) for r in rows] == [
            (u["inputTokens"], u["outputTokens"]) for u in (got[s]["usage"] for s in steps)
        ]


async def test_the_openai_node_sdk_calls_every_route_and_reads_every_error(database_url):
    async with (
        open_fake_azure(chunk_delay=0.001) as fake,
        open_gateway(
            database_url,
            deployments=[
                azure_deployment(fake, name="chat", model=MODEL),
                azure_deployment(fake, name="embed", model=EMBEDDING_MODEL),
                azure_deployment(fake, name="image", model=IMAGE_MODEL, api_version="2025-04-01-preview"),
            ],
        ) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        _, broke_key = await gw.funded_account("0")
        start = (await gw.storage.get_wallet(account)).balance
        steps = (
            "chat", "chat-stream", "chat-stream-helper", "responses", "responses-stream",
            "responses-follow-up", "embeddings", "images", "models", "bad-key", "no-model", "no-balance",
        )  # fmt: skip
        got = await run_node("openai_sdk.mjs", gw.base_url, key, *steps, OMIXA_BROKE_API_KEY=broke_key)
        chat_prompt = count_chat_prompt({"messages": [{"role": "user", "content": PROMPT}]})
        reply_tokens = count_text(DEFAULT_REPLY)

        # Chat completions: JSON, SSE with the usage frame asked for, the stream helper.
        chat_usage = {"prompt_tokens": chat_prompt, "completion_tokens": reply_tokens}
        assert got["chat"]["text"] == DEFAULT_REPLY and got["chat"]["usage"].items() >= chat_usage.items()
        streamed = got["chat-stream"]
        assert (streamed["text"], streamed["finishReason"]) == (DEFAULT_REPLY, "stop")
        assert streamed["usage"].items() >= chat_usage.items()
        helper = got["chat-stream-helper"]
        assert helper == {"text": DEFAULT_REPLY, "final": DEFAULT_REPLY, "finishReason": "stop"}

        # The Responses API: JSON, typed events in order, a follow-up and its stored response.
        body = {"instructions": "Answer briefly.", "input": PROMPT}
        response_usage = {"input_tokens": count_text(input_text(body)), "output_tokens": reply_tokens}
        answered = got["responses"]
        assert (answered["text"], answered["status"]) == (DEFAULT_REPLY, "completed")
        assert answered["usage"].items() >= response_usage.items()
        events = got["responses-stream"]
        assert (events["text"], events["final"], events["status"]) == (DEFAULT_REPLY, DEFAULT_REPLY, "completed")
        assert events["events"][0] == "response.created" and events["events"][-1] == "response.completed"
        assert events["events"].count("response.output_text.delta") == len(fake._pieces(DEFAULT_REPLY))
        assert events["usage"].items() >= response_usage.items()
        follow = got["responses-follow-up"]
        assert follow["previous"] == follow["first"] and follow["fetched"] == {
            "id": follow["second"],
            "text": DEFAULT_REPLY,
        }
        assert follow["inputItems"] == ["message"]
        assert (follow["afterDelete"]["class"], follow["afterDelete"]["status"]) == ("NotFoundError", 404)
        assert follow["second"] not in fake.stored and follow["first"] in fake.stored
        sent = [r for r in fake.requests if r.path.startswith(RESPONSES_PATH)]
        assert [(r.method, r.path.removeprefix(RESPONSES_PATH)) for r in sent[4:]] == [
            ("GET", f"/{follow['second']}"),
            ("GET", f"/{follow['second']}/input_items"),
            ("DELETE", f"/{follow['second']}"),
        ]
        assert sent[3].json["previous_response_id"] == follow["first"]

        # Embeddings: the SDK asks for base64 and decodes it; the vectors are the upstream's.
        embedded = got["embeddings"]
        sent_embeddings = next(r for r in fake.requests if r.operation == "embeddings")
        assert sent_embeddings.json["encoding_format"] == "base64"
        upstream = fake._embeddings({**sent_embeddings.json, "encoding_format": "float"})[1]
        assert embedded["vectors"] == [float32(d["embedding"]) for d in upstream["data"]]
        assert embedded["indexes"] == [0, 1]

        images = got["images"]
        assert (images["count"], images["pngSignature"], images["usage"]["output_tokens"]) == (1, "PNG", 272)
        listed = got["models"]["models"]
        assert sorted(m["id"] for m in listed) == sorted([MODEL, EMBEDDING_MODEL, IMAGE_MODEL])
        assert all(m["object"] == "model" and m["created"] > 0 for m in listed)

        # Errors: OpenAI's classes, with status, code, type and param read from the envelope.
        expected_errors = {
            "bad-key": ("AuthenticationError", 401, "invalid_api_key", "invalid_request_error", None),
            "no-model": ("NotFoundError", 404, "model_not_found", "invalid_request_error", "model"),
            "no-balance": ("APIError", 402, "insufficient_balance", "insufficient_quota", None),
        }
        for step, fields in expected_errors.items():
            error = got[step]
            assert (error["class"], error["status"], error["code"], error["type"], error["param"]) == fields, step
            assert error["requestID"] and error["requestID"] == error["bodyRequestId"], step

        # The money: nine model calls, each charged the upstream's usage; lookups are free.
        rows = await charges(gw, account, start)
        assert [(r.model, r.stream) for r in rows] == [
            (MODEL, False), (MODEL, True), (MODEL, True), (MODEL, False), (MODEL, True), (MODEL, False),
            (MODEL, False), (EMBEDDING_MODEL, False), (IMAGE_MODEL, False),
        ]  # fmt: skip
        reported = [got["chat"]["usage"], streamed["usage"], answered["usage"], events["usage"]]
        assert [tokens(r) for r in (rows[0], rows[1], rows[3], rows[4])] == [
            (u.get("prompt_tokens", u.get("input_tokens")), u.get("completion_tokens", u.get("output_tokens")))
            for u in reported
        ]
        assert tokens(rows[6]) == (follow["usage"]["input_tokens"], follow["usage"]["output_tokens"])
        assert tokens(rows[7]) == (embedded["usage"]["prompt_tokens"], 0)
        assert tokens(rows[8]) == (images["usage"]["input_tokens"], images["usage"]["output_tokens"])


async def test_the_ai_sdk_default_provider_against_omixa_demo(tmp_path):
    async with open_demo(tmp_path, {"OMIXA_BASE_URL", "OMIXA_API_KEY"}) as found:
        base, key = found["OMIXA_BASE_URL"], found["OMIXA_API_KEY"]
        got = await run_node(
            "ai_sdk.mjs", base, key, "generate", "stream", "chat-generate", "chat-stream", "multi-turn"
        )
        assert got.pop("multi-turn")["second"]["text"].strip()
        for step, result in got.items():
            assert result["text"].strip() and result["finishReason"] == "stop", step
            assert result["usage"]["inputTokens"] > 0 and result["usage"]["outputTokens"] > 0, step
        assert got["stream"]["deltas"] > 1
        async with httpx.AsyncClient() as client:
            wallet = (await client.get(f"{base}/wallet", headers={"Authorization": f"Bearer {key}"})).json()
        assert wallet["locked_balance"] == "0.00"
        assert 0 < parse_usd(wallet["balance"]) < parse_usd("10.00")
