"""OpenAI's error vocabulary, end to end: every status the gateway sends, through the official
openai SDK, raises the SDK's exception for that status with ``code``, ``type`` and ``param``
read from the body; and an upstream's refusal of the client's own request (a content filter, a
context overflow) keeps the upstream's code, param and explanation, streamed or not.

500 ``internal_error`` is provoked on a route added for the test (only a bug sends it).
"""

from __future__ import annotations

import types
from functools import partial

import httpx
import hypercorn.config
import hypercorn.trio
import openai
import pytest
import trio
from fake_azure import CONTENT_FILTER_INNERERROR, content_filter_error, context_length_error, open_fake_azure
from harness import MODEL, open_gateway
from test_errors_e2e import check_envelope

from omixa.web.http.app import create_app

MESSAGES = [{"role": "user", "content": "hi"}]
MAX_BODY = 8192


async def refusal(call, *args, **kwargs) -> openai.APIStatusError:
    """The exception ``call(*args, **kwargs)`` raises (run in a thread: the SDK is sync)."""

    def run() -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as caught:
            call(*args, **kwargs)
        return caught.value

    return await trio.to_thread.run_sync(run)


def check(exc: openai.APIStatusError, kind: type, status: int, type_: str, code: str, param: str | None) -> None:
    """The SDK's view of an error: its class, and code, type and param from our body."""
    assert type(exc) is kind, exc
    assert exc.status_code == status
    assert (exc.type, exc.code, exc.param) == (type_, code, param), exc.body
    assert isinstance(exc.body, dict) and "param" in exc.body and exc.body["request_id"].startswith("req_")


@pytest.fixture
async def gateway(database_url):
    async with (
        open_fake_azure() as fake,
        open_gateway(
            database_url,
            fake,
            server={"max_body_bytes": MAX_BODY},
            upstream={"request_timeout_seconds": 1.0},
            wallet={"self_top_up": True},
        ) as gw,
    ):
        yield gw


async def test_each_status_raises_the_sdks_exception_with_openais_fields(gateway, sdk):
    gw = gateway
    account, key = await gw.funded_account("1.00")
    client = sdk(gw, key)
    chat = client.chat.completions.create

    exc = await refusal(sdk(gw, "omx_live_wrong").chat.completions.create, model=MODEL, messages=MESSAGES)
    check(exc, openai.AuthenticationError, 401, "invalid_request_error", "invalid_api_key", None)

    exc = await refusal(chat, model=MODEL, messages=[{"role": "wizard", "content": "x"}])
    check(exc, openai.BadRequestError, 400, "invalid_request_error", "invalid_request", "messages[0].role")

    _, poor = await gw.funded_account("0.000001")
    exc = await refusal(sdk(gw, poor).chat.completions.create, model=MODEL, messages=MESSAGES, max_tokens=1000)
    check(exc, openai.APIStatusError, 402, "insufficient_quota", "insufficient_balance", None)

    exc = await refusal(chat, model="no-such-model", messages=MESSAGES)
    check(exc, openai.NotFoundError, 404, "invalid_request_error", "model_not_found", "model")
    exc = await refusal(client.get, "/wallet/transactions/txn_999999", cast_to=object)
    check(exc, openai.NotFoundError, 404, "invalid_request_error", "not_found", None)

    once = {"headers": {"Idempotency-Key": "order-1"}}
    await trio.to_thread.run_sync(
        lambda: client.post("/wallet/top-up", body={"amount": "1.00"}, cast_to=object, options=once)
    )
    exc = await refusal(client.post, "/wallet/top-up", body={"amount": "2.00"}, cast_to=object, options=once)
    check(exc, openai.ConflictError, 409, "invalid_request_error", "idempotency_key_reused", None)
    exc = await refusal(client.post, "/wallet/top-up", body={"amount": "-1"}, cast_to=object)
    check(exc, openai.BadRequestError, 400, "invalid_request_error", "invalid_request", "amount")

    exc = await refusal(chat, model=MODEL, messages=[{"role": "user", "content": "x" * MAX_BODY}])
    check(exc, openai.APIStatusError, 413, "invalid_request_error", "request_too_large", None)

    by_requests = (await gw.engine.accounts.create_key(account, rpm=1)).secret
    await trio.to_thread.run_sync(lambda: sdk(gw, by_requests).chat.completions.create(model=MODEL, messages=MESSAGES))
    exc = await refusal(sdk(gw, by_requests).chat.completions.create, model=MODEL, messages=MESSAGES)
    check(exc, openai.RateLimitError, 429, "requests", "rate_limited", None)
    # About 18 tokens a call (the prompt and a cap of 10): the second does not fit in 30.
    by_tokens = sdk(gw, (await gw.engine.accounts.create_key(account, tpm=30)).secret).chat.completions.create
    await trio.to_thread.run_sync(lambda: by_tokens(model=MODEL, messages=MESSAGES, max_tokens=10))
    exc = await refusal(by_tokens, model=MODEL, messages=MESSAGES, max_tokens=10)
    check(exc, openai.RateLimitError, 429, "tokens", "rate_limited", None)

    # The upstream's failures, in an order that never opens the breaker (3 in a row).
    gw.fake.fail_next(500)
    exc = await refusal(chat, model=MODEL, messages=MESSAGES)
    check(exc, openai.InternalServerError, 502, "server_error", "upstream_error", None)
    gw.fake.hang = True
    exc = await refusal(chat, model=MODEL, messages=MESSAGES)
    check(exc, openai.InternalServerError, 504, "server_error", "upstream_timeout", None)
    gw.fake.hang = False
    gw.fake.rate_limit_next(retry_after_ms=100)
    exc = await refusal(chat, model=MODEL, messages=MESSAGES)
    check(exc, openai.InternalServerError, 503, "server_error", "no_healthy_deployment", None)


async def test_top_up_disabled_is_403_for_the_sdk(database_url, sdk):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, key = await gw.funded_account("1.00")
        exc = await refusal(sdk(gw, key).post, "/wallet/top-up", body={"amount": "1.00"}, cast_to=object)
    check(exc, openai.PermissionDeniedError, 403, "invalid_request_error", "top_up_disabled", None)


@pytest.mark.parametrize(
    "body, code, param",
    [
        (content_filter_error(), "content_filter", "prompt"),
        (context_length_error(), "context_length_exceeded", "messages"),
    ],
)
async def test_an_upstream_refusal_of_the_request_keeps_its_code_param_and_reason(gateway, sdk, body, code, param):
    """Azure's 400 for the client's own request reaches the client with Azure's code, param,
    message and (a content filter's) innererror; a stream's comes before any content, as an
    HTTP error. Nothing is charged."""
    gw = gateway
    account, key = await gw.funded_account("1.00")
    start = await gw.storage.get_wallet(account)
    upstream = body["error"]
    async with httpx.AsyncClient(timeout=30) as http:
        for stream in (False, True):
            gw.fake.fail_next(400, body)
            response = await http.post(
                f"{gw.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": MESSAGES, "stream": stream},
            )
            error = check_envelope(response, 400, code, param)
            assert error["type"] == "invalid_request_error"
            assert error["message"] == f"The upstream rejected the request: {upstream['message']}"
            assert error.get("innererror") == upstream.get("innererror")
    for stream in (False, True):
        gw.fake.fail_next(400, body)
        exc = await refusal(sdk(gw, key).chat.completions.create, model=MODEL, messages=MESSAGES, stream=stream)
        check(exc, openai.BadRequestError, 400, "invalid_request_error", code, param)
        assert isinstance(exc.body, dict)
        if code == "content_filter":
            assert exc.body["innererror"] == CONTENT_FILTER_INNERERROR
    wallet = await gw.storage.get_wallet(account)
    assert (wallet.balance, wallet.locked) == (start.balance, 0)
    assert await gw.storage.verify_ledger() == []
    await gw.flushed()


async def test_an_upstream_error_about_the_operators_setup_passes_nothing_on(gateway, sdk):
    """A 401/404/5xx body's code, param and innererror describe the operator's deployment,
    not the request: the client gets the plain 502."""
    gw = gateway
    _, key = await gw.funded_account("1.00")
    for status in (401, 404, 500):
        gw.fake.fail_next(status, content_filter_error())
        exc = await refusal(sdk(gw, key).chat.completions.create, model=MODEL, messages=MESSAGES)
        check(exc, openai.InternalServerError, 502, "server_error", "upstream_error", None)
        assert isinstance(exc.body, dict) and "innererror" not in exc.body
        assert "content management" not in exc.message


async def test_an_unexpected_failure_is_500_internal_error_in_the_same_envelope(tmp_path, sdk):
    """Only a bug sends a 500, so the test adds one: a route that fails with a plain exception,
    on a second app built by the gateway's own ``create_app`` over the running gateway's real
    engine and served by Hypercorn; the gate, the error handler and the envelope are the
    gateway's."""
    async with open_fake_azure() as fake, open_gateway(f"sqlite:///{tmp_path / 'e.db'}", fake) as gw:
        _, key = await gw.funded_account("1.00")
        app = create_app(gw.engine)

        @app.get("/api/v1/boom")
        async def boom() -> None:
            raise RuntimeError("a bug; its text must not reach the client")

        config = hypercorn.config.Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = config.errorlog = None
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
            client = sdk(types.SimpleNamespace(base_url=f"{binds[0]}/api/v1"), key)
            exc = await refusal(client.get, "/boom", cast_to=object)
            check(exc, openai.InternalServerError, 500, "server_error", "internal_error", None)
            assert exc.body["message"] == "Internal processing failure."
            nursery.cancel_scope.cancel()
