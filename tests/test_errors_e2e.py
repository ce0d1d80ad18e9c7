"""Bad input and upstream failures: a clear envelope, the right status, and nothing held or charged."""

from __future__ import annotations

import math

import httpx
import pytest
import trio
from fake_azure import open_fake_azure
from harness import MODEL, open_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


# OpenAI's error types, by status: every refusal of the request itself (401 included) is an
# invalid_request_error, an exhausted balance insufficient_quota, a 429 the limit that
# refused, a 5xx a server_error.
TYPES = {402: {"insufficient_quota"}, 429: {"requests", "tokens"}}
ENVELOPE_KEYS = {"message", "type", "param", "code", "request_id"}


def expected_types(status: int) -> set[str]:
    return TYPES.get(status, {"server_error"} if status >= 500 else {"invalid_request_error"})


def check_envelope(response: httpx.Response, status: int, code: str, param: str | None | type = object) -> dict:
    """The error envelope of ``response``: its status, code, type and request id (and its
    ``param`` when given)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) - {"innererror"} == ENVELOPE_KEYS, error
    assert error["code"] == code
    assert error["message"]
    assert error["type"] in expected_types(status), error
    assert error["request_id"] == response.headers["x-request-id"]
    if param is not object:
        assert error["param"] == param, error
    return error


async def ledger_unchanged(gw, account: str, rows_before: int) -> None:
    assert len(await gw.storage.ledger_entries(account)) == rows_before
    wallet = await gw.storage.get_wallet(account)
    assert wallet.locked == 0


@pytest.fixture
async def gateway(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, server={"max_body_bytes": 4096}) as gw:
        yield gw


async def test_bad_requests_get_clear_errors_and_change_nothing(gateway):
    gw = gateway
    account, key = await gw.funded_account("1.00")
    rows = len(await gw.storage.ledger_entries(account))
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{gw.base_url}/chat/completions"
    model = {"model": MODEL}
    cases = [
        (
            dict(content=b"{not json", headers={**auth, "content-type": "application/json"}),
            400,
            "invalid_request",
            None,
        ),
        (dict(content=b"", headers=auth), 400, "invalid_request", None),
        (dict(json=["a list"], headers=auth), 400, "invalid_request", None),
        (dict(json={"messages": MESSAGES}, headers=auth), 400, "invalid_request", "model"),
        (dict(json={"model": "no-such-model", "messages": MESSAGES}, headers=auth), 404, "model_not_found", "model"),
        # In the catalog, but no deployment serves it here.
        (dict(json={"model": "gpt-4.1", "messages": MESSAGES}, headers=auth), 404, "model_not_found", "model"),
        (
            dict(json={"model": "text-embedding-3-small", "messages": MESSAGES}, headers=auth),
            404,
            "model_not_found",
            "model",
        ),
        (dict(json={**model, "messages": []}, headers=auth), 400, "invalid_request", "messages"),
        (
            dict(json={**model, "messages": [{"role": "wizard", "content": "x"}]}, headers=auth),
            400,
            "invalid_request",
            "messages[0].role",
        ),
        (
            dict(json={**model, "messages": [*MESSAGES, {"role": "user"}]}, headers=auth),
            400,
            "invalid_request",
            "messages[1].content",
        ),
        (
            dict(json={**model, "messages": [{"role": "user", "content": 5}]}, headers=auth),
            400,
            "invalid_request",
            "messages[0].content",
        ),
        (
            dict(json={**model, "messages": MESSAGES, "max_tokens": 0}, headers=auth),
            400,
            "invalid_request",
            "max_tokens",
        ),
        (
            dict(json={**model, "messages": MESSAGES, "max_tokens": 10**18}, headers=auth),
            400,
            "invalid_request",
            "max_tokens",
        ),
        (
            dict(json={**model, "messages": MESSAGES, "max_completion_tokens": 16385}, headers=auth),
            400,
            "invalid_request",
            "max_completion_tokens",
        ),
        (dict(json={**model, "messages": MESSAGES, "stream": "yes"}, headers=auth), 400, "invalid_request", "stream"),
        (
            dict(json={**model, "messages": MESSAGES, "stream_options": {}}, headers=auth),
            400,
            "invalid_request",
            "stream_options",
        ),
        (
            dict(json={**model, "messages": MESSAGES, "service_tier": "gold"}, headers=auth),
            400,
            "invalid_request",
            "service_tier",
        ),
        (
            dict(json={**model, "messages": [{"role": "user", "content": "x" * 5000}]}, headers=auth),
            413,
            "request_too_large",
            None,
        ),
        (dict(json={**model, "messages": MESSAGES}), 401, "invalid_api_key", None),
        (
            dict(json={**model, "messages": MESSAGES}, headers={"Authorization": "Bearer omx_live_wrong"}),
            401,
            "invalid_api_key",
            None,
        ),
        (
            dict(json={**model, "messages": MESSAGES}, headers={"Authorization": "Basic abc"}),
            401,
            "invalid_api_key",
            None,
        ),
    ]
    async with httpx.AsyncClient() as client:
        for kwargs, status, code, param in cases:
            check_envelope(await client.post(url, **kwargs), status, code, param)
        check_envelope(await client.get(f"{gw.base_url}/nothing-here", headers=auth), 404, "not_found", None)
        not_allowed = await client.get(url, headers=auth)
        check_envelope(not_allowed, 405, "method_not_allowed", None)
        assert not_allowed.headers["allow"] == "POST"
    await ledger_unchanged(gw, account, rows)
    assert gw.fake.requests == []


async def test_revoked_key_stops_at_once(gateway):
    """Revoked behind this process's back (as another process would): the very next request
    is refused, a paid call included, although this process saw the key live just before
    (its hold re-checks the key): nothing is held, charged or sent upstream."""
    gw = gateway
    account, key = await gw.funded_account("1.00")
    record = await gw.engine.accounts.authenticate(f"Bearer {key}")
    chat = {"model": MODEL, "messages": MESSAGES}
    async with httpx.AsyncClient() as client:
        auth = {"Authorization": f"Bearer {key}"}
        assert (await client.get(f"{gw.base_url}/wallet", headers=auth)).status_code == 200
        paid = await client.post(f"{gw.base_url}/chat/completions", headers=auth, json=chat)
        assert paid.status_code == 200, paid.text
        sent, rows = len(gw.fake.requests), len(await gw.storage.ledger_entries(account))
        assert await gw.storage.revoke_api_key(record.id)
        check_envelope(
            await client.post(f"{gw.base_url}/chat/completions", headers=auth, json=chat), 401, "invalid_api_key"
        )
        streamed = await client.post(f"{gw.base_url}/chat/completions", headers=auth, json={**chat, "stream": True})
        check_envelope(streamed, 401, "invalid_api_key")
        check_envelope(await client.get(f"{gw.base_url}/wallet", headers=auth), 401, "invalid_api_key")
    await ledger_unchanged(gw, account, rows)
    assert len(gw.fake.requests) == sent


async def test_insufficient_balance_is_402_and_holds_nothing(gateway):
    gw = gateway
    account, key = await gw.funded_account("0.000001")
    rows = len(await gw.storage.ledger_entries(account))
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1000},
        )
    check_envelope(response, 402, "insufficient_balance")
    await ledger_unchanged(gw, account, rows)
    assert gw.fake.requests == []


async def test_exactly_one_cap_goes_upstream(gateway):
    gw = gateway
    _, key = await gw.funded_account("1.00")
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 500, "max_completion_tokens": 3},
        )
    assert response.status_code == 200, response.text
    sent = gw.fake.requests[-1].json
    assert sent["max_completion_tokens"] == 3 and "max_tokens" not in sent


async def test_default_cap_is_lowered_to_what_the_wallet_covers(gateway):
    gw = gateway
    # $0.001 covers the prompt and about 1,600 output tokens of gpt-4o-mini, not 16,384.
    account, key = await gw.funded_account("0.001")
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MODEL, "messages": MESSAGES},
        )
    assert response.status_code == 200, response.text
    cap = gw.fake.requests[-1].json["max_tokens"]
    assert 1000 < cap < 16384
    wallet = await gw.storage.get_wallet(account)
    assert wallet.locked == 0 and wallet.balance > 0
    assert await gw.storage.verify_ledger() == []


@pytest.mark.parametrize(
    "status, headers, code, http_status",
    [
        (500, None, "upstream_error", 502),
        (401, None, "upstream_error", 502),  # the operator's key is wrong: not the client's fault
        (400, None, "invalid_request", 400),
        (429, {"retry-after-ms": "2500"}, "no_healthy_deployment", 503),
    ],
)
async def test_upstream_errors_are_mapped_and_not_charged(gateway, status, headers, code, http_status):
    gw = gateway
    account, key = await gw.funded_account("1.00")
    start = await gw.storage.get_wallet(account)
    async with httpx.AsyncClient() as client:
        started = trio.current_time()
        for stream in (False, True):
            gw.fake.fail_next(status, headers=headers)
            response = await client.post(
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": MESSAGES, "stream": stream},
            )
            check_envelope(response, http_status, code)
            if status == 429 and not stream:
                assert response.headers["retry-after"] == "3"  # 2.5 s, rounded up
            elif status == 429:
                # The only deployment is still cooling: the rest of the 2.5 s, rounded up.
                left = 2.5 - (trio.current_time() - started)
                assert math.ceil(left) <= int(response.headers["retry-after"]) <= 3
    wallet = await gw.storage.get_wallet(account)
    assert (wallet.balance, wallet.locked) == (start.balance, 0)
    assert await gw.storage.verify_ledger() == []
    await gw.flushed()


async def test_upstream_unreachable_is_502(database_url):
    deployment = {
        "name": "dead",
        "model": MODEL,
        "provider": "azure",
        "endpoint": "http://127.0.0.1:9",
        "deployment": "x",
        "api_key": "k",
    }
    async with open_gateway(database_url, deployments=[deployment]) as gw:
        account, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": MESSAGES},
            )
        check_envelope(response, 502, "upstream_error")
        wallet = await gw.storage.get_wallet(account)
        assert wallet.locked == 0 and wallet.balance == 1_000_000_000


async def test_healthz_and_models(gateway):
    gw = gateway
    _, key = await gw.funded_account("1.00")
    async with httpx.AsyncClient() as client:
        health = await client.get(f"{gw.root_url}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.headers["x-request-id"].startswith("req_")
        models = (await client.get(f"{gw.base_url}/models", headers={"Authorization": f"Bearer {key}"})).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["pricing"]["input"] == "0.15"


async def test_wallet_requires_a_key(gateway):
    async with httpx.AsyncClient() as client:
        check_envelope(await client.get(f"{gateway.base_url}/wallet"), 401, "invalid_api_key")
