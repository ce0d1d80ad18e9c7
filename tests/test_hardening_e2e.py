"""Inputs and upstream answers that used to end in the wrong status or leak something: each now
gets its documented answer, and changes nothing it should not."""

from __future__ import annotations

import json

import httpx
import pytest
from fake_azure import MSG_404, open_fake_azure
from harness import MODEL, azure_deployment, open_gateway
from test_errors_e2e import check_envelope, ledger_unchanged

from omixa.engine.catalog import cost_of
from omixa.engine.config import DeploymentConfig
from omixa.engine.upstream import Usage
from omixa.storage import RequestLogFilter

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, wallet={"self_top_up": True}) as gw:
        yield gw


async def test_bad_values_are_400_not_500(gateway):
    """Deeply nested JSON, times outside what a filter can name, amounts too large or finer
    than a nano-dollar, a NUL in a filter (PostgreSQL refuses it in text): each a 400 in the
    envelope, with nothing written."""
    gw = gateway
    account, key = await gw.funded_account("1.00")
    rows = len(await gw.storage.ledger_entries(account))
    auth = {"Authorization": f"Bearer {key}"}
    deep = b"[" * 100_000 + b"]" * 100_000
    async with httpx.AsyncClient(base_url=gw.base_url, headers=auth) as client:
        for path in ("/chat/completions", "/embeddings", "/wallet/top-up"):
            check_envelope(await client.post(path, content=deep), 400, "invalid_request")
        for query in (
            "until=0001-01-01T00:00:00Z",
            "since=0001-01-01T00:00:00Z",
            "until=9999-12-31T23:59:59Z",
            "since=-5",
            "until=99999999999999",
            "since=2026-01-01T00:00:00",  # no timezone
        ):
            check_envelope(await client.get(f"/usage/rollups?{query}"), 400, "invalid_request")
            check_envelope(await client.get(f"/usage/requests?{query}"), 400, "invalid_request")
        for amount in ("1e999999999", "1.1000000000", 1e300, "9999999999", "NaN", "-1"):
            check_envelope(await client.post("/wallet/top-up", json={"amount": amount}), 400, "invalid_request")
        for url in (
            "/usage/requests?model=a%00b",
            "/usage/requests?status=%00",
            "/usage/rollups?model=%00",
            "/usage/requests/req_%00",
            "/wallet/transactions/txn_1%00",
        ):
            check_envelope(await client.get(url), 400, "invalid_request")
    await ledger_unchanged(gw, account, rows)


async def test_an_upstream_answer_with_infinity_is_a_502(gateway):
    """NaN and Infinity are not JSON: such an answer is malformed, never relayed or billed."""
    gw = gateway
    account, key = await gw.funded_account("1.00")
    answer = (
        b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": '
        b'{"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], '
        b'"usage": {"prompt_tokens": Infinity, "completion_tokens": 1, "total_tokens": Infinity}}'
    )
    gw.fake.fail_next(200, answer, {"content-type": "application/json"})
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": MESSAGES},
        )
    check_envelope(response, 502, "upstream_error")
    entries = await gw.settled_entries(account)
    assert [e.type for e in entries][-2:] == ["hold", "release"]  # nothing charged


async def test_a_request_that_did_not_ask_for_priority_is_billed_at_standard_prices(database_url):
    """The upstream labelling the answer "priority" does not make it priority for billing:
    the request was held at standard prices and sent as "default"."""
    async with (
        open_fake_azure() as fake,
        open_gateway(
            database_url, deployments=[azure_deployment(fake, model="gpt-5.1", priority=True, api_version="2025-12-01")]
        ) as gw,
    ):
        fake.service_tier = "priority"
        account, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient() as client:
            for stream in (False, True):
                response = await client.post(
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "gpt-5.1", "messages": MESSAGES, "stream": stream, "max_completion_tokens": 50},
                )
                assert response.status_code == 200, response.text
        await gw.flushed()
        model = gw.engine.catalog.get("gpt-5.1")
        logs = await gw.storage.list_request_logs(RequestLogFilter(account_id=account, limit=10))
        assert len(logs) == 2
        for log in logs:
            usage = Usage(
                prompt_tokens=log.prompt_tokens,
                completion_tokens=log.completion_tokens,
                cached_tokens=log.cached_tokens,
                reasoning_tokens=log.reasoning_tokens,
            )
            assert log.cost == cost_of(usage, model.prices) < cost_of(usage, model.priority_prices)


async def test_upstream_errors_that_reveal_the_operators_setup_get_a_clean_message(database_url, caplog):
    """Azure's 404 for a missing deployment names the operator's resource; 401 its key. The
    developer gets 502 with a plain message; the operator's log keeps Azure's own text."""
    async with (
        open_fake_azure() as fake,
        open_gateway(database_url, deployments=[azure_deployment(fake, name="eastus-1")]) as gw,
    ):
        fake.deployments = {"another-deployment"}
        account, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient() as client:
            for stream in (False, True):
                response = await client.post(
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": MESSAGES, "stream": stream},
                )
                error = check_envelope(response, 502, "upstream_error")
                assert error["message"] == "The upstream could not serve this request."
                assert "deployment" not in response.text.lower()
        assert any(
            MSG_404[:40] in record.getMessage() and "eastus-1" in record.getMessage() for record in caplog.records
        )


def test_a_deployments_api_key_never_shows_in_its_repr():
    config = DeploymentConfig(name="d", model=MODEL, endpoint="https://x", deployment="d", api_key="sekrit-azure-key")
    assert "sekrit" not in repr(config) and "sekrit" not in str(config)
    assert json.dumps({"d": repr(config)})  # still a useful repr
    assert "name='d'" in repr(config)


async def test_chat_responses_carry_the_proxy_headers_streamed_or_not(gateway):
    """The API docs say the chat completions response sets X-Accel-Buffering: no,
    Cache-Control: no-transform and Alt-Svc: clear: so does every answer of that route,
    a JSON one and an error included."""
    gw = gateway
    _, key = await gw.funded_account("1.00")
    async with httpx.AsyncClient() as client:
        url = f"{gw.base_url}/chat/completions"
        auth = {"Authorization": f"Bearer {key}"}
        answers = [
            await client.post(url, headers=auth, json={"model": MODEL, "messages": MESSAGES}),
            await client.post(url, headers=auth, json={"model": MODEL, "messages": MESSAGES, "stream": True}),
            await client.post(url, headers=auth, json={"model": MODEL, "messages": []}),
            await client.post(url, json={"model": MODEL, "messages": MESSAGES}),
        ]
    assert [a.status_code for a in answers] == [200, 200, 400, 401]
    for answer in answers:
        assert answer.headers["x-accel-buffering"] == "no"
        assert "no-transform" in answer.headers["cache-control"]
        assert answer.headers["alt-svc"] == "clear"


def test_the_operations_guide_covers_the_playground_path_and_live_reload():
    """docs/operations.md: the proxy guidance and the nginx example name the playground's
    chat path beside the API's, and adding a deployment needs no restart."""
    from pathlib import Path

    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    proxy = guide[guide.index("### Behind a reverse proxy") : guide.index("### Graceful shutdown")]
    assert "/playground/chat/completions" in proxy
    nginx = proxy[proxy.index("```nginx") :]
    assert "playground" in nginx and "api/v1" in nginx
    assert "Restart `serve` to use the new deployment" not in guide
    api = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    assert "Time to the first content token (streams), else `null`" not in api


async def test_bodies_the_fuzzer_found_get_400_and_whole_floats_count_as_integers(database_url):
    """Found by tests/test_fuzz_api.py: a role or an image option of the wrong JSON type was
    a 500, an image "stream": 0 was taken for false. And 2.0 is the integer 2 in JSON (and in
    JSON Schema, so in the OpenAPI document): the server takes it as such, and forwards 2.
    NaN, Infinity and numbers past a float's range are not JSON numbers: 400."""
    async with (
        open_fake_azure() as fake,
        open_gateway(
            database_url,
            deployments=[
                azure_deployment(fake),
                azure_deployment(fake, name="img", model="gpt-image-1"),
            ],
        ) as gw,
    ):
        account, key = await gw.funded_account("5.00")
        rows = len(await gw.storage.ledger_entries(account))
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        refused = [
            ("/chat/completions", {"model": MODEL, "messages": [{"role": {}, "content": "hi"}]}),
            ("/chat/completions", {"model": MODEL, "messages": [{"role": [], "content": "hi"}]}),
            ("/images/generations", {"model": "gpt-image-1", "prompt": "a", "quality": {}}),
            ("/images/generations", {"model": "gpt-image-1", "prompt": "a", "size": []}),
            ("/images/generations", {"model": "gpt-image-1", "prompt": "a", "stream": 0}),
        ]
        async with httpx.AsyncClient(base_url=gw.base_url, headers=auth) as client:
            for path, body in refused:
                check_envelope(await client.post(path, json=body), 400, "invalid_request")
            for raw in (
                b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "top_p": 1e999}',
            ):
                check_envelope(await client.post("/chat/completions", content=raw), 400, "invalid_request")
            await ledger_unchanged(gw, account, rows)
            assert fake.requests == []
            whole = await client.post(
                "/chat/completions",
                content=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 2.0, "max_tokens": 5.0}',
            )
            assert whole.status_code == 200, whole.text
        sent = fake.requests[-1].json
        assert sent["n"] == 2 and isinstance(sent["n"], int) and sent["max_tokens"] == 5
