"""Request ids across the upstream seam, end to end: the gateway sends its request id to Azure
(``x-ms-client-request-id``), and the request log, the usage API and the ``omixa.request``
line keep the upstream's own id of the call that answered (the fake Azure's
``apim-request-id``, the fake Vertex's ``responseId``), also after a failover."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fake_azure import open_fake_azure
from fake_vertex import open_fake_vertex
from harness import MODEL, azure_deployment, open_gateway
from test_vertex_e2e import vertex_deployment

from omixa.web.logs import formatter

MESSAGES = [{"role": "user", "content": "Say something about foxes."}]
# What a JSON request line carries besides level, logger, message and timestamp.
REQUEST_FIELDS = {"request_id", "account_id", "key_id", "model", "provider", "deployment", "region", "status",
                  "stream", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
                  "cost_nano", "latency_ms", "ttft_ms", "upstream_request_id"}  # fmt: skip


@pytest.fixture
def json_request_log() -> Iterator[io.StringIO]:
    """What the ``omixa.request`` logger writes while the test runs, as ``[logging] format =
    "json"`` writes it (the gateway's own formatter, on a handler of the test's)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter("json"))
    logger = logging.getLogger("omixa.request")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def call(gw, key: str, path: str, body: dict[str, Any]) -> tuple[str, bytes]:
    """POST ``body`` (a stream is read to its end); the response's request id and body."""
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        async with client.stream("POST", f"{gw.base_url}{path}", json=body) as response:
            raw = await response.aread()
            assert response.status_code == 200, raw
            return response.headers["x-request-id"], raw


async def usage_row(gw, key: str, request_id: str) -> dict[str, Any]:
    """The request's row in ``GET /usage/requests/{id}``, once written."""
    await gw.request_log(request_id)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
        response = await client.get(f"{gw.base_url}/usage/requests/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_azure_gets_our_request_id_and_the_log_keeps_azures(database_url, json_request_log, caplog):
    caplog.set_level(logging.INFO, logger="omixa.request")
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, key = await gw.funded_account("10.00")
        rows = {}
        for stream in (False, True):
            request_id, _ = await call(
                gw, key, "/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": stream}
            )
            sent = fake.requests[-1]
            assert sent.headers["x-ms-client-request-id"] == request_id
            row = rows[request_id] = await gw.request_log(request_id)
            assert (row.stream, row.upstream_request_id) == (stream, sent.upstream_id)
            assert (await usage_row(gw, key, request_id))["upstream_request_id"] == sent.upstream_id
        assert len({row.upstream_request_id for row in rows.values()}) == 2  # one id per call
    # The text line says it too.
    text = [r.getMessage() for r in caplog.records if r.name == "omixa.request"]
    for request_id, row in rows.items():
        assert any(
            f"id={request_id} " in m and m.endswith(f"upstream_request_id={row.upstream_request_id}") for m in text
        )
    # Each JSON line parses alone and carries every field, with the values of the row.
    lines = [json.loads(line) for line in json_request_log.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == list(rows)
    for line in lines:
        assert line.keys() == REQUEST_FIELDS | {"level", "logger", "message", "timestamp"}
        assert (line["level"], line["logger"]) == ("INFO", "omixa.request")
        assert line["message"].startswith(f"request id={line['request_id']} ")  # the text line's message
        assert line["timestamp"].endswith("+00:00")  # ISO 8601, in UTC
        row = rows[line["request_id"]]
        assert {name: line[name] for name in REQUEST_FIELDS} == {
            "request_id": row.id, "account_id": row.account_id, "key_id": row.key_id, "model": row.model,
            "provider": "azure", "deployment": "eastus-1", "region": "eastus", "status": "ok",
            "stream": row.stream, "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "cached_tokens": 0, "reasoning_tokens": 0, "cost_nano": row.cost, "latency_ms": row.latency_ms,
            "ttft_ms": row.ttft_ms, "upstream_request_id": row.upstream_request_id,
        }  # fmt: skip
        assert row.cost > 0 and row.prompt_tokens > 0 and row.ttft_ms is not None


async def test_vertex_takes_no_id_of_ours_and_the_log_keeps_its_response_id(database_url):
    async with open_fake_vertex() as fake, open_gateway(database_url, deployments=[vertex_deployment(fake)]) as gw:
        _, key = await gw.funded_account("10.00")
        for stream in (False, True):
            body = {"model": "gemini-2.5-flash", "messages": MESSAGES, "stream": stream}
            request_id, _ = await call(gw, key, "/chat/completions", body)
            sent = fake.requests[-1]
            assert "x-ms-client-request-id" not in sent.headers  # Google has no such header
            assert (await gw.request_log(request_id)).upstream_request_id == sent.upstream_id
            assert (await usage_row(gw, key, request_id))["upstream_request_id"] == sent.upstream_id


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_over_request_keeps_the_answering_attempts_id(database_url, caplog, stream):
    """The first deployment answers 500 (with an id of its own), the second answers: the log
    keeps the second's id, the failover's warning names the first's, and both attempts were
    sent the one request id."""
    async with open_fake_azure() as fake:
        deployments = [azure_deployment(fake, name="east-1"), azure_deployment(fake, name="east-2")]
        async with open_gateway(database_url, fake, deployments=deployments) as gw:
            _, key = await gw.funded_account("10.00")
            fake.fail_next(500)
            request_id, _ = await call(
                gw, key, "/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": stream}
            )
            failed, answered = fake.requests
            assert failed.headers["x-ms-client-request-id"] == answered.headers["x-ms-client-request-id"] == request_id
            row = await gw.request_log(request_id)
            assert (row.status, row.upstream_request_id) == ("ok", answered.upstream_id)
    warnings = [r.getMessage() for r in caplog.records if r.name == "omixa.chat" and r.levelno == logging.WARNING]
    assert any(request_id in m and f"upstream id {failed.upstream_id}" in m for m in warnings), warnings


async def test_every_kind_of_call_carries_our_request_id_to_azure(tmp_path):
    """Embeddings, images and the Responses API (JSON, stream, and a stored response's
    lookup) send the request id too, and their logs keep Azure's id."""
    async with open_fake_azure() as fake:
        deployments = [
            azure_deployment(fake, name="chat-1"),
            azure_deployment(fake, name="emb-1", model="text-embedding-3-small"),
            azure_deployment(fake, name="img-1", model="gpt-image-1", api_version="2025-04-01-preview"),
        ]
        async with open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake, deployments=deployments) as gw:
            _, key = await gw.funded_account("10.00")
            calls = [
                ("/embeddings", {"model": "text-embedding-3-small", "input": "foxes"}),
                (
                    "/images/generations",
                    {"model": "gpt-image-1", "prompt": "a fox", "quality": "low", "size": "1024x1024"},
                ),
                ("/responses", {"model": MODEL, "input": "Say something about foxes."}),
                ("/responses", {"model": MODEL, "input": "Say something about foxes.", "stream": True}),
            ]
            for path, body in calls:
                request_id, raw = await call(gw, key, path, body)
                sent = fake.requests[-1]
                assert sent.headers["x-ms-client-request-id"] == request_id, path
                assert (await gw.request_log(request_id)).upstream_request_id == sent.upstream_id, path
            response_id = json.loads((await call(gw, key, "/responses", calls[2][1]))[1])["id"]
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
                lookup = await client.get(f"{gw.base_url}/responses/{response_id}")
            assert lookup.status_code == 200
            assert fake.requests[-1].headers["x-ms-client-request-id"] == lookup.headers["x-request-id"]
