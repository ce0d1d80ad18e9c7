"""The fake upstream's answers, built once as bytes: the non-streaming completion, the
frames of a stream in Azure's framing, the error answers, and ``Knobs``, which holds a run's
settings and the stream bodies built from them."""

from __future__ import annotations

import json

# ---------------------------------------------------------------------------------------
# Precomputed payloads
# ---------------------------------------------------------------------------------------
CREATED = 1732550400
MODEL = "gpt-4o-mini-2024-07-18"
FINGERPRINT = "fp_04751d0b65"
COMPLETION_ID = "chatcmpl-AXbench7Qk2mZ9pLr4sTw8vYx1nC"
PROMPT_TOKENS = 21
_OK = {"filtered": False, "severity": "safe"}
FILTERS = {"hate": _OK, "self_harm": _OK, "sexual": _OK, "violence": _OK}
PROMPT_FILTERS = [
    {
        "prompt_index": 0,
        "content_filter_results": {**FILTERS, "jailbreak": {"filtered": False, "detected": False}},
    }
]
# Token-sized pieces of text, cycled through by the content frames.
WORDS = [
    " The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
    " Stream", "ing", " tokens", " arrive", " one", " at", " a", " time", ",", " each",
    " in", " its", " own", " frame", " with", " filter", " results", " attached", ".", "\n",
]  # fmt: skip
ANSWER = "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."
COMPLETION_TOKENS = 19


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk carrying ``payload``."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj: object) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _frame(delta: dict, filters: dict, finish: str | None) -> dict:
    return {
        "choices": [{"content_filter_results": filters, "delta": delta, "finish_reason": finish, "index": 0}],
        "created": CREATED,
        "id": COMPLETION_ID,
        "model": MODEL,
        "object": "chat.completion.chunk",
        "system_fingerprint": FINGERPRINT,
    }


def _usage(completion: int) -> dict:
    return {
        "completion_tokens": completion,
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "audio_tokens": 0,
            "reasoning_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "prompt_tokens": PROMPT_TOKENS,
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
        "total_tokens": PROMPT_TOKENS + completion,
    }


AZURE_HEADERS = (
    b"apim-request-id: 6f3c2a1e-4b7d-4e8a-9c0f-1d2e3f4a5b6c\r\n"
    b"x-ms-region: East US\r\n"
    b"x-ratelimit-remaining-requests: 9999\r\n"
    b"x-ratelimit-remaining-tokens: 9999000\r\n"
    b"x-request-id: 0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0\r\n"
    b"azureml-model-session: d20241120-1-171101234\r\n"
)


def _response(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"Content-Type: " + ctype + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n" + AZURE_HEADERS + b"\r\n" + body
    )


COMPLETION_BODY = _dumps(
    {
        "choices": [
            {
                "content_filter_results": FILTERS,
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {"annotations": [], "content": ANSWER, "refusal": None, "role": "assistant"},
            }
        ],
        "created": CREATED,
        "id": COMPLETION_ID,
        "model": MODEL,
        "object": "chat.completion",
        "prompt_filter_results": PROMPT_FILTERS,
        "system_fingerprint": FINGERPRINT,
        "usage": _usage(COMPLETION_TOKENS),
    }
)
COMPLETION_RESPONSE = _response("200 OK", COMPLETION_BODY)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n" + AZURE_HEADERS + b"\r\n"
)
FILTER_CHUNK = _chunk(
    _event(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": PROMPT_FILTERS,
        }
    )
)
ROLE_CHUNK = _chunk(_event(_frame({"content": "", "refusal": None, "role": "assistant"}, {}, None)))
# Content frames with the full content_filter_results (~465 bytes) and with an empty one
# (~280 bytes); --filter-every K puts the full results on every K-th frame.
CONTENT_EVENTS_FULL = [_event(_frame({"content": w}, FILTERS, None)) for w in WORDS]
CONTENT_EVENTS_EMPTY = [_event(_frame({"content": w}, {}, None)) for w in WORDS]
DONE_CHUNK = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def finish_chunk(n: int) -> bytes:
    return _chunk(_event(_frame({}, {}, "length" if n < 0 else "stop")))


FINISH_STOP = finish_chunk(0)
FINISH_LENGTH = finish_chunk(-1)


def usage_chunk(n: int) -> bytes:
    obj = {
        "choices": [],
        "created": CREATED,
        "id": COMPLETION_ID,
        "model": MODEL,
        "object": "chat.completion.chunk",
        "system_fingerprint": FINGERPRINT,
        "usage": _usage(n),
    }
    return _chunk(_event(obj))


def error_response(status: str, code: str, message: str) -> bytes:
    return _response(status, _dumps({"error": {"code": code, "message": message}}))


ERR_404 = error_response("404 Not Found", "404", "Resource not found")
ERR_400_VERSION = error_response(
    "400 Bad Request",
    "MissingApiVersionParameter",
    "The api-version query parameter (?api-version=) is required for all requests.",
)
ERR_401 = error_response(
    "401 Unauthorized", "401", "Access denied due to invalid subscription key or wrong API endpoint."
)
ERR_411 = error_response("411 Length Required", "411", "Content-Length is required.")


class Knobs:
    def __init__(self, events: int, interval: float, first_token: float, filter_every: int) -> None:
        self.events = events
        self.interval = interval
        self.first_token = first_token
        self._bodies: dict[tuple[int, bool], bytes] = {}
        # One cycle of content chunks (words x filter pattern), frame i is cycle[i % len].
        k = max(1, filter_every)
        size = len(WORDS) * k
        self.content_chunks = [
            _chunk((CONTENT_EVENTS_FULL if i % k == k - 1 else CONTENT_EVENTS_EMPTY)[i % len(WORDS)])
            for i in range(size)
        ]
        events_bytes = [len(c) - len(b"%x\r\n\r\n" % (len(c))) for c in self.content_chunks]
        self.mean_frame_bytes = sum(events_bytes) / len(events_bytes)

    def stream_body(self, n: int, usage: bool) -> bytes:
        """Everything after the filter frame, for a fast stream of ``n`` content frames."""
        key = (n, usage)
        body = self._bodies.get(key)
        if body is None:
            parts = [ROLE_CHUNK]
            chunks = self.content_chunks
            k = len(chunks)
            parts.extend(chunks[i % k] for i in range(n))
            parts.append(FINISH_LENGTH if n < self.events else FINISH_STOP)
            if usage:
                parts.append(usage_chunk(n))
            parts.append(DONE_CHUNK)
            body = b"".join(parts)
            if len(self._bodies) < 64:
                self._bodies[key] = body
        return body
