"""What each API's frame reader (engine/stream_frames.py) makes of upstream events: what is
forwarded, what ends a stream, the usage, the tier, the content counted when the upstream
reports no usage, what commits a stream to its deployment, and the error event."""

from __future__ import annotations

import json

import pytest

from omixa.engine.catalog import load_catalog
from omixa.engine.chat_request import ChatRequest
from omixa.engine.errors import UpstreamError
from omixa.engine.stream_frames import ChatFrames, ResponseFrames
from omixa.engine.upstream import Completion, SseEvent, Usage


def event(data: dict, name: str | None = None) -> SseEvent:
    head = f"event: {name}\n".encode() if name else b""
    return SseEvent(raw=head + b"data: " + json.dumps(data).encode() + b"\n\n", data=data)


def chunk(delta: dict, **extra) -> SseEvent:
    return event({"choices": [{"index": 0, "delta": delta}], **extra})


def test_chat_frames_count_content_tool_calls_and_legacy_function_calls():
    frames = ChatFrames(include_usage=False, keep_filter_frames=False)
    assert frames.read(chunk({"role": "assistant", "content": ""})).commits is False
    text = frames.read(chunk({"content": "Hello"}))
    assert (text.text, text.commits, text.forward) == ("Hello", True, True)
    call = {"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": '{"city"'}}]}
    assert frames.read(chunk(call)).text == 'get_weather{"city"'
    legacy = frames.read(chunk({"function_call": {"name": "lookup", "arguments": "{}"}}))
    assert legacy.text == "lookup{}"
    tiered = frames.read(chunk({"content": "x"}, service_tier="priority"))
    assert tiered.tier == "priority"


def test_chat_frames_drop_what_was_not_asked_for_and_end_at_done():
    quiet = ChatFrames(include_usage=False, keep_filter_frames=False)
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    read = quiet.read(event(usage))
    assert (read.forward, read.usage) == (False, Usage(prompt_tokens=3, completion_tokens=4))
    assert ChatFrames(include_usage=True, keep_filter_frames=False).read(event(usage)).forward is True
    assert quiet.read(event({"choices": [], "prompt_filter_results": []})).forward is False
    assert quiet.read(SseEvent(raw=b"data: [DONE]\n\n", done=True)).end is True
    assert quiet.end_types == frozenset()
    with pytest.raises(UpstreamError, match="boom"):
        quiet.read(event({"error": {"message": "boom"}}))


def test_a_chat_answer_without_usage_counts_a_legacy_function_call():
    model = load_catalog().get("gpt-4o-mini")
    assert model is not None
    request = ChatRequest(model=model, body={}, stream=False, include_usage=False, prompt_tokens=7,
                          output_tokens=100, cap_is_clients=False, choices=1)  # fmt: skip
    body = {"choices": [{"message": {"content": None, "function_call": {"name": "lookup", "arguments": '{"q": 1}'}}}]}
    usage = request.usage_of(Completion(body=body, usage=None))
    assert usage.prompt_tokens == 7 and usage.completion_tokens > 0


@pytest.mark.parametrize("store", [True, False])
def test_response_frames_commit_at_created_and_report_a_stored_id(store):
    frames = ResponseFrames(store=store)
    created = frames.read(event({"type": "response.created", "sequence_number": 0,
                                 "response": {"id": "resp_1", "store": True}}, "response.created"))  # fmt: skip
    assert created.commits is True and created.text == ""
    assert created.answer_id == ("resp_1" if store else None)
    not_kept = frames.read(event({"type": "response.created", "response": {"id": "resp_2", "store": False}}))
    assert not_kept.answer_id is None  # the upstream did not store it (Vertex)


def test_response_frames_count_deltas_end_with_usage_and_number_their_error_event():
    frames = ResponseFrames(store=True)
    delta = frames.read(event({"type": "response.output_text.delta", "sequence_number": 4, "delta": "Hi"}))
    assert (delta.text, delta.commits, delta.forward) == ("Hi", True, True)
    args = frames.read(event({"type": "response.function_call_arguments.delta", "sequence_number": 5, "delta": "{"}))
    assert args.text == "{"
    usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 1}}  # fmt: skip
    for kind in ("response.completed", "response.incomplete"):
        done = frames.read(event({"type": kind, "sequence_number": 6, "response": {"usage": usage}}))
        assert done.end is True and done.usage == Usage(prompt_tokens=9, completion_tokens=5, cached_tokens=2,
                                                         reasoning_tokens=1)  # fmt: skip
    assert "response.completed" in frames.end_types
    with pytest.raises(UpstreamError, match="too slow"):
        frames.read(event({"type": "response.failed", "response": {"error": {"message": "too slow"}}}))
    with pytest.raises(UpstreamError, match="bad"):
        frames.read(event({"type": "error", "code": "x", "message": "bad"}))
    raw = frames.error_event(UpstreamError("It broke."), "req_1")
    head, data = raw.split(b"\n", 1)
    assert head == b"event: error" and raw.endswith(b"\n\n")
    error = json.loads(data.removeprefix(b"data: "))
    assert error == {"type": "error", "code": "upstream_error", "message": "It broke.", "param": None,
                     "request_id": "req_1", "sequence_number": 7}  # fmt: skip
