"""The Gemini translation, table by table: requests, reasoning effort, responses, URLs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from omixa.engine.config import ConfigError, DeploymentConfig
from omixa.engine.config_loader import structure_config
from omixa.engine.errors import InvalidRequest, UpstreamError
from omixa.engine.providers import gemini
from omixa.engine.providers.vertex import _Chunks, error_from_response, model_url

# Every family x every effort: what reaches Vertex (docs/api.md carries the same table).
THINKING_TABLE = {
    #                        none   minimal  low   medium  high   xhigh
    "gemini-2.5-pro":        (128,   128,    1024, 8192,  24576, 32768),
    "gemini-2.5-flash":      (0,     512,    1024, 8192,  24576, 24576),
    "gemini-2.5-flash-lite": (0,     512,    1024, 8192,  24576, 24576),
    "gemini-3-pro-preview":  ("low", "low", "low", "high", "high", "high"),
    "gemini-3-flash-preview": ("minimal", "minimal", "low", "medium", "high", "high"),
}  # fmt: skip


@pytest.mark.parametrize("model", sorted(THINKING_TABLE))
@pytest.mark.parametrize("effort", gemini.EFFORTS)
def test_reasoning_effort_maps_per_family(model, effort):
    want = THINKING_TABLE[model][gemini.EFFORTS.index(effort)]
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}
    gemini.check_request(body)
    config = gemini.to_gemini(body, model)["generationConfig"]["thinkingConfig"]
    assert config == ({"thinkingBudget": want} if isinstance(want, int) else {"thinkingLevel": want})


def test_no_effort_sends_no_thinking_config():
    assert "generationConfig" not in gemini.to_gemini(
        {"messages": [{"role": "user", "content": "hi"}]}, "gemini-2.5-pro"
    )


def test_messages_become_contents_and_system_instruction():
    body = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]},
        {"role": "assistant", "content": "Bonjour", "name": "bot"},
        {"role": "user", "content": "Encore"},
    ], "n": 3, "presence_penalty": 0.5, "frequency_penalty": 0.1, "seed": 7, "stop": "STOP",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "user": "u-1", "service_tier": "priority", "stream_options": {"include_usage": True}}  # fmt: skip
    gemini.check_request(body)
    out = gemini.to_gemini(body, "gemini-2.5-flash")
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}, {"text": "Look:"},
                                   {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}}]},
        {"role": "model", "parts": [{"text": "Bonjour"}]},
        {"role": "user", "parts": [{"text": "Encore"}]},
    ]  # fmt: skip
    assert out["generationConfig"] == {
        "candidateCount": 3,
        "presencePenalty": 0.5,
        "frequencyPenalty": 0.1,
        "seed": 7,
        "stopSequences": ["STOP"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [{"type": "function"}]}, "'tools' is not supported"),
        ({"logit_bias": {"50256": -100}}, "'logit_bias' is not supported"),
        ({"audio": {"voice": "alloy"}}, "'audio' is not supported"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"temperature": "hot"}, "'temperature' must be a number"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "tool calls are not supported"),
        ({"messages": [{"role": "system", "content": "only"}]}, "at least one user or assistant"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "'input_audio' are not supported",
        ),
    ],
)
def test_what_gemini_cannot_take_is_refused_with_its_name(extra, message):
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(InvalidRequest, match=message):
        gemini.check_request(body)


def test_empty_tools_and_false_logprobs_ask_for_nothing():
    gemini.check_request(
        {"messages": [{"role": "user", "content": "hi"}], "tools": [], "logprobs": False, "logit_bias": {}}
    )


@pytest.mark.parametrize(
    ("vertex", "openai"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("LANGUAGE", "stop"),
    ],  # fmt: skip
)
def test_finish_reasons(vertex, openai):
    answer, _ = gemini.to_completion(
        {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": vertex}]}, "gemini-2.5-flash"
    )
    assert answer["choices"][0]["finish_reason"] == openai


def test_usage_metadata_becomes_openai_usage():
    usage = gemini.usage_of({"promptTokenCount": 100, "candidatesTokenCount": 20, "thoughtsTokenCount": 30,
                             "cachedContentTokenCount": 60, "totalTokenCount": 150})  # fmt: skip
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens, usage.cached_tokens) == (
        100,
        50,
        30,
        60,
    )
    assert gemini.openai_usage(usage) == {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    assert gemini.usage_of(None) is None


def test_a_safety_stop_without_content_is_an_empty_content_filter_answer():
    answer, _ = gemini.to_completion({"candidates": [{"finishReason": "SAFETY", "safetyRatings": []}]}, "m")
    assert answer["choices"][0]["message"]["content"] == ""
    assert answer["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize(
    ("dep", "url"),
    [
        (
            dict(location="us-central1", project="p1"),
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-pro",
        ),
        (
            dict(location="global", project="p1"),
            "https://aiplatform.googleapis.com/v1/projects/p1/locations/global/publishers/google/models/gemini-2.5-pro",
        ),
        (
            dict(location="global", api_key="k"),
            "https://aiplatform.googleapis.com/v1/publishers/google/models/gemini-2.5-pro",
        ),
        (
            dict(
                location="europe-west4", project="p1", endpoint="http://127.0.0.1:9/", deployment="gemini-2.5-pro-002"
            ),
            "http://127.0.0.1:9/v1/projects/p1/locations/europe-west4/publishers/google/models/gemini-2.5-pro-002",
        ),
    ],
)
def test_regional_global_and_express_urls(dep, url):
    assert model_url(DeploymentConfig(name="v", model="gemini-2.5-pro", provider="vertex", **dep)) == url


def test_vertex_error_bodies_give_status_message_and_retry_delay():
    body = [{"error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED",
                       "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}]}}]  # fmt: skip
    error = error_from_response(httpx.Response(429), json.dumps(body).encode())
    assert (error.upstream_status, error.retry_after, error.message) == (
        429,
        12.5,
        "RESOURCE_EXHAUSTED: Resource exhausted.",
    )
    error = error_from_response(httpx.Response(503, headers={"retry-after": "3"}), b"<html>")
    assert (error.upstream_status, error.retry_after, error.message) == (503, 3.0, "Vertex answered HTTP 503.")


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_a_stream_cut_before_its_finish_reason_is_an_upstream_error():
    event = b'data: {"candidates":[{"content":{"parts":[{"text":"Hi"}]}}]}\r\n\r\n'
    chunks = _Chunks(_chunks(event), gemini.ChunkEncoder("m", include_usage=True))
    assert (await chunks.__anext__()).data["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert (await chunks.__anext__()).data["choices"][0]["delta"] == {"content": "Hi"}
    with pytest.raises(UpstreamError, match="before a finish reason"):
        await chunks.__anext__()


async def test_an_error_event_inside_a_stream_is_an_upstream_error():
    event = b'data: {"error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}\r\n\r\n'
    chunks = _Chunks(_chunks(event), gemini.ChunkEncoder("m", include_usage=False))
    with pytest.raises(UpstreamError, match="Internal error encountered"):
        await chunks.__anext__()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "location: required"),
        ({"location": "us-central1"}, "exactly one of api_key and service_account_file"),
        ({"location": "us-central1", "api_key": "k", "service_account_file": "sa.json"}, "exactly one"),
        ({"location": "US Central", "api_key": "k"}, "not a Vertex location"),
        ({"location": "global", "api_key": "k", "endpoint": "ftp://x"}, "endpoint: must start"),
    ],
)
def test_vertex_deployments_are_checked(extra, message):
    raw = {"deployments": [{"name": "v", "model": "gemini-2.5-flash", "provider": "vertex", **extra}]}
    with pytest.raises(ConfigError, match=message):
        structure_config(raw, base_dir=Path("."))


def test_vertex_api_keys_resolve_from_the_environment(monkeypatch):
    raw = {"deployments": [{"name": "v", "model": "gemini-2.5-flash", "provider": "vertex",
                            "location": "global", "api_key": "env:VX_TEST_KEY"}]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"deployments\[0\].api_key"):
        structure_config(raw, base_dir=Path("."))
    monkeypatch.setenv("VX_TEST_KEY", "secret")
    dep = structure_config(raw, base_dir=Path(".")).deployments[0]
    assert (dep.api_key, dep.deployment, dep.region, dep.project) == ("secret", "gemini-2.5-flash", "global", "")


def test_a_blocked_prompt_without_usage_metadata_costs_nothing():
    blocked = {"promptFeedback": {"blockReason": "JAILBREAK"}}
    answer, usage = gemini.to_completion(blocked, "m")
    assert usage == gemini.Usage() and answer["usage"]["prompt_tokens"] == 0
    assert answer["choices"][0]["message"]["refusal"] == "The prompt was blocked by Vertex (JAILBREAK)."
    encoder = gemini.ChunkEncoder("m", include_usage=True)
    frames = [data for _, data in encoder.feed(blocked) + encoder.finish()]
    assert [f["choices"][0]["finish_reason"] for f in frames if f and f["choices"]] == [None, None, "content_filter"]
    assert frames[-2]["usage"]["prompt_tokens"] == 0 and frames[-1] is None
