"""Traces end to end: a real gateway with tracing on, its spans caught by OpenTelemetry's
in-memory exporter (handed in through ``run_gateway``'s ``span_processor``), or sent over
OTLP/HTTP to a fake collector; requests from a client that sends a W3C ``traceparent``.

What is checked: every span of a request is in the caller's trace, the request's span is
the child of the caller's span, the hold, each upstream attempt and the settle are children
of the request's span and come in that order, a failover shows one upstream span per
attempt, a stream's request span ends after its settle (also when the client leaves), the
sampler follows the caller's sampled flag, and ``[tracing]`` is checked as configured.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from fake_azure import open_fake_azure
from harness import MODEL, azure_deployment, open_gateway
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from omixa.engine.config import ConfigError
from omixa.engine.config_loader import structure_config
from omixa.engine.tokens import count_chat_prompt

MESSAGES = [{"role": "user", "content": "Say something about foxes."}]
PROBE = Path(__file__).with_name("otel_probe.py")


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """A new caller's (trace id, span id, traceparent header)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


async def finished_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    """The spans of ``trace_id``, once its request's span has ended (which the client may see
    the response before)."""
    with trio.fail_after(10):
        while True:
            spans = [s for s in exporter.get_finished_spans() if hex_trace(s) == trace_id]
            if any(s.kind is SpanKind.SERVER for s in spans):
                return spans
            await trio.sleep(0.01)


def request_tree(spans: list[ReadableSpan], parent_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The request's span (the remote ``parent_id``'s child) and its children in the order
    they started; every span of the trace is one of these."""
    (request,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert request.parent is not None and request.parent.is_remote
    assert format(request.parent.span_id, "016x") == parent_id
    assert request.context is not None
    children = sorted((s for s in spans if s is not request), key=lambda s: s.start_time or 0)
    for child in children:
        assert child.parent is not None and child.parent.span_id == request.context.span_id
    return request, children


def attrs_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def in_order(spans: list[ReadableSpan]) -> None:
    """Each span ends before the next starts (the exchange's steps follow each other)."""
    for before, after in zip(spans, spans[1:], strict=False):
        assert before.end_time is not None and after.start_time is not None
        assert before.end_time <= after.start_time, (before.name, after.name)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced(exporter: InMemorySpanExporter) -> dict[str, Any]:
    """open_gateway's arguments that trace into ``exporter``."""
    return {"span_processor": SimpleSpanProcessor(exporter), "tracing": {"service_name": "omixa-test"}}


async def post(gw, key: str, header: str | None, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if header is not None:
        headers["traceparent"] = header
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(
            f"{gw.base_url}/chat/completions", headers=headers, json={"model": MODEL, "messages": MESSAGES, **body}
        )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_paid_call_is_one_trace_under_the_callers_span(database_url, exporter, stream):
    async with open_fake_azure(chunk_delay=0.001) as fake, open_gateway(database_url, fake, **traced(exporter)) as gw:
        account, key = await gw.funded_account("1.00")
        trace_id, parent_id, header = traceparent()
        response = await post(gw, key, header, stream=stream)
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        if stream:
            assert response.text.rstrip().endswith("data: [DONE]")
        spans = await finished_trace(exporter, trace_id)
        row = await gw.request_log(request_id)

        request, children = request_tree(spans, parent_id)
        assert [s.name for s in children] == ["omixa.hold", "omixa.upstream", "omixa.settle"]
        hold, upstream, settle = children
        in_order(children)
        # The request's span ends after the settle, a stream's too (not when the view returned).
        assert request.end_time is not None and settle.end_time is not None
        assert request.end_time >= settle.end_time
        assert request.start_time is not None and hold.start_time is not None
        assert request.start_time <= hold.start_time

        assert request.name == "POST /api/v1/chat/completions"
        assert request.resource.attributes["service.name"] == "omixa-test"
        assert request.status.status_code is StatusCode.UNSET
        prompt = count_chat_prompt({"messages": MESSAGES})
        expected = {
            "url.path": "/api/v1/chat/completions",
            "http.request.method": "POST",
            "http.route": "/api/v1/chat/completions",
            "http.response.status_code": 200,
            "omixa.request_id": request_id,
            "omixa.account_id": account,
            "omixa.key_id": row.key_id,
            "omixa.outcome": "ok",
            "omixa.cost_nano": row.cost,
            "omixa.deployment": "eastus-1",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": MODEL,
            "gen_ai.request.stream": stream,
            "gen_ai.usage.input_tokens": prompt,
            "gen_ai.usage.output_tokens": row.completion_tokens,
        }
        assert {name: attrs_of(request).get(name) for name in expected} == expected
        assert attrs_of(request)["gen_ai.response.time_to_first_chunk"] >= 0

        assert attrs_of(hold)["omixa.hold.amount_nano"] > 0
        assert attrs_of(hold)["omixa.hold_id"].startswith("hold_")
        assert {name: attrs_of(upstream).get(name) for name in ("omixa.deployment", "omixa.region")} == {
            "omixa.deployment": "eastus-1",
            "omixa.region": "eastus",
        }
        assert upstream.kind is SpanKind.CLIENT
        assert attrs_of(upstream)["gen_ai.provider.name"] == "azure.ai.openai"
        assert attrs_of(upstream)["http.response.status_code"] == 200
        assert attrs_of(upstream)["omixa.outcome"] == "ok" and attrs_of(upstream)["omixa.attempt"] == 1
        assert attrs_of(upstream)["gen_ai.usage.input_tokens"] == prompt
        assert attrs_of(settle) == {"omixa.outcome": "ok", "omixa.cost_nano": row.cost}
        # Ids, amounts and names; never the key or the conversation.
        for span in spans:
            for value in attrs_of(span).values():
                assert key not in str(value) and "foxes" not in str(value)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failover_shows_one_upstream_span_per_attempt(exporter, tmp_path, stream):
    """The preferred deployment answers 500 (a JSON call), or breaks its stream after the
    head and before any content (a stream, which the relay then fails over)."""
    knobs: dict[str, Any] = {"break_after": 0} if stream else {}
    async with open_fake_azure(**knobs) as bad, open_fake_azure() as good:
        if not stream:
            bad.fail_next(500)
        deployments = [
            azure_deployment(bad, name="bad", weight=100.0),
            azure_deployment(good, name="good", weight=0.001),
        ]
        async with open_gateway(f"sqlite:///{tmp_path / 'o.db'}", deployments=deployments, **traced(exporter)) as gw:
            _, key = await gw.funded_account("1.00")
            trace_id, parent_id, header = traceparent()
            response = await post(gw, key, header, stream=stream)
            assert response.status_code == 200 and len(bad.requests) == len(good.requests) == 1
            request, children = request_tree(await finished_trace(exporter, trace_id), parent_id)

    assert [s.name for s in children] == ["omixa.hold", "omixa.upstream", "omixa.upstream", "omixa.settle"]
    in_order(children)
    failed, answered = children[1], children[2]
    assert attrs_of(failed)["omixa.deployment"] == "bad" and attrs_of(failed)["omixa.attempt"] == 1
    assert attrs_of(failed)["omixa.failover"] is True
    assert attrs_of(failed)["omixa.outcome"] == "upstream_error"
    assert failed.status.status_code is StatusCode.ERROR
    if stream:
        assert "http.response.status_code" not in attrs_of(failed)  # its head was a 200
    else:
        assert attrs_of(failed)["http.response.status_code"] == 500
        assert attrs_of(failed)["error.type"] == "500"
    assert attrs_of(answered)["omixa.deployment"] == "good" and attrs_of(answered)["omixa.attempt"] == 2
    assert attrs_of(answered)["omixa.outcome"] == "ok" and "omixa.failover" not in attrs_of(answered)
    assert attrs_of(request)["omixa.deployment"] == "good" and attrs_of(request)["omixa.outcome"] == "ok"


async def test_an_abandoned_stream_ends_its_spans(exporter, tmp_path):
    async with open_fake_azure(stall_after=2) as fake:
        async with open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake, **traced(exporter)) as gw:
            _, key = await gw.funded_account("1.00")
            trace_id, parent_id, header = traceparent()
            async with httpx.AsyncClient(timeout=30) as client:
                async with client.stream(
                    "POST",
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}", "traceparent": header},
                    json={"model": MODEL, "messages": MESSAGES, "stream": True},
                ) as response:
                    async for chunk in response.aiter_raw():
                        if b'"content":"' in chunk and b"quick" in chunk:
                            break  # content arrived; the upstream now stalls: leave
            request, children = request_tree(await finished_trace(exporter, trace_id), parent_id)
            with trio.fail_after(10):
                await fake.wait_disconnected()

    assert [s.name for s in children] == ["omixa.hold", "omixa.upstream", "omixa.settle"]
    upstream, settle = children[1], children[2]
    assert attrs_of(upstream)["omixa.outcome"] == "client_closed"
    assert upstream.status.status_code is StatusCode.UNSET  # the client left: nobody's failure
    assert attrs_of(settle)["omixa.outcome"] == "client_closed"
    assert attrs_of(request)["omixa.outcome"] == "client_closed"
    assert attrs_of(request)["http.response.status_code"] == 200
    assert request.end_time is not None and settle.end_time is not None and request.end_time >= settle.end_time


async def test_a_stream_that_fails_after_content_is_an_error_under_its_200(exporter, tmp_path):
    """The upstream drops the stream after two content frames: no other deployment may take
    over, the client gets an error event after its 200, and the trace says so."""
    async with open_fake_azure(break_after=2) as fake:
        async with open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake, **traced(exporter)) as gw:
            _, key = await gw.funded_account("1.00")
            trace_id, parent_id, header = traceparent()
            response = await post(gw, key, header, stream=True)
            assert response.status_code == 200 and '"code":"upstream_error"' in response.text
            request, children = request_tree(await finished_trace(exporter, trace_id), parent_id)

    assert [s.name for s in children] == ["omixa.hold", "omixa.upstream", "omixa.settle"]
    upstream = children[1]
    assert upstream.status.status_code is StatusCode.ERROR and attrs_of(upstream)["omixa.outcome"] == "upstream_error"
    assert "omixa.failover" not in attrs_of(upstream)
    assert request.status.status_code is StatusCode.ERROR
    assert attrs_of(request)["http.response.status_code"] == 200
    assert attrs_of(request)["omixa.outcome"] == "upstream_error"


async def test_sampling_follows_the_caller_and_the_ratio(exporter, tmp_path):
    """``sample_ratio = 0``: a request without a traceparent is not traced, one whose caller
    sampled its trace is, one whose caller did not is not; each is served the same."""
    options = traced(exporter)
    options["tracing"]["sample_ratio"] = 0.0
    async with open_fake_azure() as fake, open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake, **options) as gw:
        _, key = await gw.funded_account("1.00")
        kept_id, parent_id, kept = traceparent(sampled=True)
        dropped_id, _, dropped = traceparent(sampled=False)
        for header in (None, dropped, kept):
            assert (await post(gw, key, header)).status_code == 200
        request_tree(await finished_trace(exporter, kept_id), parent_id)
        assert {hex_trace(s) for s in exporter.get_finished_spans()} == {kept_id}
        assert dropped_id != kept_id


async def test_a_refused_hold_and_an_unpaid_request(exporter, tmp_path):
    """A wallet that cannot pay: the hold's span is the error and nothing goes upstream. A
    request without a key: the request's span alone, with its 401."""
    async with (
        open_fake_azure() as fake,
        open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake, **traced(exporter)) as gw,
    ):
        account, key = await gw.funded_account("0")
        trace_id, parent_id, header = traceparent()
        assert (await post(gw, key, header)).status_code == 402
        request, children = request_tree(await finished_trace(exporter, trace_id), parent_id)
        assert [s.name for s in children] == ["omixa.hold", "omixa.settle"]
        assert children[0].status.status_code is StatusCode.ERROR
        assert attrs_of(children[0])["omixa.outcome"] == "insufficient_balance"
        assert attrs_of(request)["http.response.status_code"] == 402
        assert request.status.status_code is StatusCode.UNSET  # the wallet's, not the server's
        assert attrs_of(request)["omixa.account_id"] == account
        assert fake.requests == []

        trace_id, parent_id, header = traceparent()
        assert (await post(gw, "omx_live_nope", header)).status_code == 401
        request, children = request_tree(await finished_trace(exporter, trace_id), parent_id)
        assert children == [] and attrs_of(request)["http.response.status_code"] == 401
        assert request.status.status_code is StatusCode.UNSET  # a client's error is not the server's


# -- OTLP over HTTP, to a collector ---------------------------------------------------------


@asynccontextmanager
async def open_collector() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], ExportTraceServiceRequest]]]]:
    """A fake OTLP/HTTP collector on loopback: (its traces URL, what it received: each export
    request's headers and decoded body)."""
    received: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        received.append((headers, ExportTraceServiceRequest.FromString(body)))
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-protobuf")]}
        )
        await send({"type": "http.response.body", "body": b""})

    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, app, config, mode="asgi"))
        try:
            yield f"{binds[0]}/v1/traces", received
        finally:
            nursery.cancel_scope.cancel()


async def test_spans_reach_an_otlp_collector_by_engine_stop(tmp_path, monkeypatch):
    """``otlp_endpoint`` set: the spans go out in batches over OTLP/HTTP, with the configured
    headers (an ``env:`` value read when the config is loaded); the last batch is sent when
    the engine stops."""
    monkeypatch.setenv("OMIXA_TEST_OTLP_TOKEN", "s3cret")
    async with open_collector() as (url, received), open_fake_azure() as fake:
        tracing = {
            "otlp_endpoint": url,
            "service_name": "omixa-otlp",
            "headers": {"x-token": "env:OMIXA_TEST_OTLP_TOKEN"},
        }
        async with open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake, tracing=tracing) as gw:
            _, key = await gw.funded_account("1.00")
            trace_id, _, header = traceparent()
            assert (await post(gw, key, header)).status_code == 200
            assert "s3cret" not in repr(gw.engine.config)
        # The gateway has stopped: its batch processor exported what it held.
        assert received, "nothing was exported"
        assert {headers.get("x-token") for headers, _ in received} == {"s3cret"}
        names, services = [], set()
        for _, export in received:
            for resource_spans in export.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                services.add(attributes["service.name"])
                for scope_spans in resource_spans.scope_spans:
                    names += [s.name for s in scope_spans.spans if s.trace_id.hex() == trace_id]
        assert services == {"omixa-otlp"}
        assert sorted(names) == sorted(
            ["POST /api/v1/chat/completions", "omixa.hold", "omixa.upstream", "omixa.settle"]
        )


# -- the configuration -------------------------------------------------------------------


def config_of(tracing: dict[str, Any], **options: Any):
    return structure_config({"tracing": tracing}, base_dir=Path("."), **options)


@pytest.mark.parametrize(
    ("tracing", "message"),
    [
        ({"sample_ratio": 1.5}, "tracing.sample_ratio: must be between 0 and 1, got 1.5"),
        ({"sample_ratio": "all"}, "tracing.sample_ratio: expected a number, got 'all'"),
        ({"otlp_endpoint": "collector:4318"}, "tracing.otlp_endpoint: must start with https:// or http://"),
        ({"otlp_endpoint": "http://c:4318/v1/traces", "service_name": " "}, "tracing.service_name: must not be empty"),
        (
            {"otlp_endpoint": "http://c:4318/v1/traces", "headers": {"a": 1}},
            "tracing.headers['a']: expected a string, got 1",
        ),
        (
            {"otlp_endpoint": "http://c/v1/traces", "headers": {"a": "env:OMIXA_TEST_UNSET"}},
            "tracing.headers.a: environment variable OMIXA_TEST_UNSET is not set",
        ),
        ({"endpoint": "http://c/v1/traces"}, "tracing.endpoint: unknown key"),
    ],
)
def test_bad_tracing_config_is_refused_with_its_key(tracing, message, monkeypatch):
    monkeypatch.delenv("OMIXA_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as refused:
        config_of(tracing)
    assert str(refused.value) == message


def test_tracing_config_defaults_and_unresolved_headers():
    config = config_of({})
    assert (config.tracing.otlp_endpoint, config.tracing.service_name, config.tracing.sample_ratio) == (
        "",
        "omixa",
        1.0,
    )
    # A command that serves nothing leaves env: values alone (the variable is the server's).
    tracing = {"otlp_endpoint": "http://c/v1/traces", "headers": {"a": "env:OMIXA_TEST_UNSET"}}
    config = config_of(tracing, resolve_secrets=False)
    assert config.tracing.headers == {"a": "env:OMIXA_TEST_UNSET"}
    assert "OMIXA_TEST_UNSET" not in repr(config) and hash(config) == hash(config_of(tracing, resolve_secrets=False))


def test_an_endpoint_without_the_extra_is_refused_when_serving(monkeypatch):
    """The distributions' metadata is what is looked up (nothing is imported to check)."""
    import importlib.metadata

    real = importlib.metadata.version

    def version(name: str) -> str:
        if name.startswith("opentelemetry"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(ConfigError, match=r"opentelemetry-sdk is not installed\): pip install 'omixa\[otel\]'"):
        config_of({"otlp_endpoint": "http://c:4318/v1/traces"})
    config_of({"otlp_endpoint": "http://c:4318/v1/traces"}, resolve_secrets=False)  # not serving: no check


# -- nothing of OpenTelemetry without tracing -----------------------------------------------


async def probe(*args: str) -> dict[str, Any]:
    """tests/otel_probe.py in a process of its own: its JSON report."""
    done = await trio.run_process(
        [sys.executable, str(PROBE), *args], capture_stdout=True, capture_stderr=True, check=False
    )
    assert done.returncode in (0, 2), done.stderr.decode()
    return json.loads(done.stdout.decode().splitlines()[-1])


async def test_without_opentelemetry_the_gateway_serves_and_imports_none_of_it(tmp_path):
    """With OpenTelemetry not importable (the extra not installed), a gateway without
    ``[tracing]`` serves a JSON and a streamed call and has no ``opentelemetry`` module; one
    with ``otlp_endpoint`` stops at start with the extra's name, as ``omixa serve`` does."""
    report = await probe("--block", str(tmp_path / "a.db"))
    assert report == {"statuses": [200, 200], "opentelemetry": [], "omixa_tracing": False}
    report = await probe("--block", "--traced", str(tmp_path / "b.db"))
    assert report["exit"] == 2
    assert "tracing.otlp_endpoint: tracing needs OpenTelemetry" in report["error"]
    assert "pip install 'omixa[otel]'" in report["error"]


async def test_with_opentelemetry_installed_and_tracing_unset_nothing_of_tracing_loads(tmp_path):
    """redis-py (8.2) imports OpenTelemetry's metrics SDK by itself whenever it is
    installed; the gateway's tracing, OpenTelemetry's trace SDK and the OTLP exporter stay
    unloaded."""
    report = await probe(str(tmp_path / "a.db"))
    assert report["statuses"] == [200, 200] and report["omixa_tracing"] is False
    loaded = report["opentelemetry"]
    assert not [m for m in loaded if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))], loaded
