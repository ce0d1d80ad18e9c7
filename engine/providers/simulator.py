"""A simulated upstream: Azure-shaped answers with no network (``omixa demo``, load tests).

Chat answers depend only on the request, never on chance: the same request always gets the
same answer (:mod:`engine.providers.sim_answers` makes them, :mod:`engine.providers.sim_chat`
frames them). Plain text is pseudo-text from a fixed word list seeded by a hash of the
messages; ``tools`` get a tool call whose arguments validate against the function's
``parameters`` (when ``tool_choice`` allows; "auto" calls one after a user message and
answers in text after a tool's result); ``response_format`` ``json_object`` and
``json_schema`` get JSON (for a schema, a value that validates against it); ``n`` gets that
many different choices; ``logprobs`` gets per-token log probabilities with ``top_logprobs``
alternatives. Usage is counted with :mod:`engine.tokens` (prompt = ``count_chat_prompt(body)``;
completion = every choice's tokens, a tool call's name included), so it always agrees with
what a client would count, and no choice outgrows the body's output cap.

Timing follows the deployment's ``sim_*`` knobs: the first event after ``sim_first_token_ms``,
then a chunk of ``sim_tokens_per_chunk`` tokens (one per choice when ``n`` > 1) every
``sim_chunk_interval_ms`` (0: no pause).
Frames and objects are shaped like Azure's (``prompt_filter_results``, per-choice
``content_filter_results``, the empty-``choices`` first and usage frames).

Embeddings: one deterministic unit-length vector per input (``dimensions`` floats, else
:data:`EMBEDDING_DIMENSIONS`), as floats or base64 float32, with ``usage.prompt_tokens``
counted with ``cl100k_base`` (token arrays count as their length). Images: ``n`` copies of a
1x1 PNG as ``b64_json``, with the quality and size used ("auto": medium, 1024x1024) and, like
Azure's older image API, no ``usage``, so Omixa charges the catalog's price per image.

The Responses API: the chat answer of the translated body, as a response object or Azure's
typed events, stored on one simulated resource (:mod:`engine.providers.sim_responses`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import secrets
import struct
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

from omixa.engine.config import DeploymentConfig
from omixa.engine.providers.sim_answers import Answer, answer
from omixa.engine.providers.sim_chat import (
    FIRST_FRAME,
    chat_ask,
    choice_count,
    completion_body,
    is_legacy,
    stream_frames,
    top_logprobs,
)
from omixa.engine.providers.sim_responses import RESOURCE
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import CallIds, Completion, SseEvent, Usage

_DONE = SseEvent(raw=b"data: [DONE]\n\n", done=True)
# Vector size when an embeddings request names no ``dimensions``.
EMBEDDING_DIMENSIONS = 1536


def _png_1x1() -> bytes:
    """A real 1x1 white PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff")) + chunk(b"IEND", b""))  # fmt: skip
    return png


TINY_PNG = _png_1x1()
_PNG_B64 = base64.b64encode(TINY_PNG).decode()


class SimulatorProvider:
    """An upstream that answers from memory, shaped and timed like an Azure deployment.

    Args:
        deployment: ``model`` names the answers; the ``sim_*`` knobs set length and pacing.
    """

    name = "simulator"

    def __init__(self, deployment: DeploymentConfig) -> None:
        self._dep = deployment
        digest = hashlib.sha256(deployment.model.encode()).hexdigest()
        self._fingerprint = "fp_" + digest[:10]

    def _answer(self, body: dict[str, Any]) -> tuple[list[Answer], dict[str, Any]]:
        """The body's answers, one per choice, and their usage. Errors: UpstreamError 400."""
        ask = chat_ask(body, self._dep.sim_completion_tokens)
        answers = [answer(ask, index) for index in range(choice_count(body))]
        prompt = count_chat_prompt(body)
        completion = sum(a.tokens for a in answers)
        usage = {
            "completion_tokens": completion,
            "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0,
                                          "reasoning_tokens": 0, "rejected_prediction_tokens": 0},
            "prompt_tokens": prompt,
            "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
            "total_tokens": prompt + completion,
        }  # fmt: skip
        return answers, usage

    def _head(self, obj: str) -> dict[str, Any]:
        return {"created": int(time.time()), "id": "chatcmpl-" + secrets.token_hex(14),
                "model": self._dep.model, "object": obj,
                "system_fingerprint": self._fingerprint}  # fmt: skip

    async def complete(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """A full ``chat.completion`` after the time the stream would have taken. ``ids``, in
        every method: unused (no upstream, so no upstream id; the request log says None).

        Cancellation: nothing is held; the sleep simply stops.
        Errors: UpstreamError 400 for what Azure refuses (see :mod:`engine.providers.sim_chat`).
        """
        answers, usage = self._answer(body)
        size = self._dep.sim_tokens_per_chunk
        chunks = max(-(-len(a.pieces) // size) for a in answers)
        await _sleep_ms(self._dep.sim_first_token_ms + chunks * self._dep.sim_chunk_interval_ms)
        data = completion_body(answers, self._head("chat.completion"), usage,
                               legacy=is_legacy(body), top=top_logprobs(body))  # fmt: skip
        return Completion(body=json.loads(json.dumps(data)), usage=Usage.from_openai(usage))

    @asynccontextmanager
    async def open_stream(
        self, body: dict[str, Any], ids: CallIds | None = None
    ) -> AsyncIterator[AsyncIterator[SseEvent]]:
        """Yield the answer as Azure-shaped SSE events, paced by the ``sim_*`` knobs.

        A usage frame (empty ``choices``) comes before ``[DONE]`` only when
        ``stream_options.include_usage`` is true, as on Azure.
        Errors: UpstreamError 400 on entering, for what Azure refuses.
        """
        answers, usage = self._answer(body)
        head = self._head("chat.completion.chunk")
        frames = [(FIRST_FRAME, True)]
        frames += stream_frames(answers, head, self._dep.sim_tokens_per_chunk,
                                legacy=is_legacy(body), top=top_logprobs(body))  # fmt: skip
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            frames.append(({"choices": [], **head, "usage": usage}, False))
        del body  # as a real upstream's stream, this one keeps nothing of its prompt
        yield _SimStream(frames, self._dep.sim_first_token_ms, self._dep.sim_chunk_interval_ms)

    async def embed(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """An OpenAI ``list`` of embeddings for a checked body, after ``sim_first_token_ms``."""
        inputs = body["input"]
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        dims = body.get("dimensions") or EMBEDDING_DIMENSIONS
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            tokens += count_text(item, "cl100k_base") if isinstance(item, str) else len(item)
            rng = random.Random(hashlib.sha256(json.dumps(item).encode()).digest())
            vector = [rng.uniform(-1, 1) for _ in range(dims)]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vector = [v / norm for v in vector]
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        await _sleep_ms(self._dep.sim_first_token_ms)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        answer = {"object": "list", "data": data, "model": self._dep.model, "usage": usage}
        return Completion(body=answer, usage=Usage.from_openai(usage))

    async def generate_images(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """``n`` tiny PNGs, after ``sim_first_token_ms``; no usage (see the module docstring)."""
        quality = body.get("quality", "auto")
        size = body.get("size", "auto")
        await _sleep_ms(self._dep.sim_first_token_ms)
        answer = {
            "created": int(time.time()), "background": "opaque", "output_format": "png",
            "quality": "medium" if quality == "auto" else quality,
            "size": "1024x1024" if size == "auto" else size,
            "data": [{"b64_json": _PNG_B64} for _ in range(body.get("n", 1))],
        }  # fmt: skip
        return Completion(body=answer, usage=None)

    async def respond(self, body: dict[str, Any], ids: CallIds | None = None) -> Completion:
        """A Responses API body, answered through :meth:`complete` as a response object and
        stored on the simulated resource (:mod:`engine.providers.sim_responses`)."""
        return await RESOURCE.respond(body, self.complete, self._dep.model)

    def open_response_stream(
        self, body: dict[str, Any], ids: CallIds | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[SseEvent]]:
        """A streaming Responses API body, through :meth:`open_stream`: Azure's typed events."""
        return RESOURCE.open_stream(body, self.open_stream, self._dep.model)

    async def manage_response(self, method: str, path: str, ids: CallIds | None = None) -> dict[str, Any]:
        """A stored response's GET, input_items, DELETE or cancel, as Azure answers them."""
        return RESOURCE.manage(method, path)

    async def aclose(self) -> None:
        """Nothing to close."""


class _SimStream:
    """Emits prepared frames: the first after ``first_ms``, each paced one (a round of
    content chunks) ``every_ms`` after the previous round; the others (role, finish, usage,
    [DONE]) at once."""

    __slots__ = ("_frames", "_first_ms", "_every_ms", "_index")

    def __init__(self, frames: list[tuple[dict[str, Any], bool]], first_ms: float, every_ms: float) -> None:
        self._frames = frames
        self._first_ms = first_ms
        self._every_ms = every_ms
        self._index = 0

    def __aiter__(self) -> _SimStream:
        return self

    async def __anext__(self) -> SseEvent:
        i = self._index
        if i > len(self._frames):
            raise StopAsyncIteration
        self._index += 1
        if i == len(self._frames):
            return _DONE
        frame, paced = self._frames[i]
        if paced:
            await _sleep_ms(self._first_ms if i == 0 else self._every_ms)
        raw = b"data: " + json.dumps(frame, separators=(",", ":")).encode() + b"\n\n"
        return SseEvent(raw=raw, data=json.loads(raw[6:]))


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await trio.sleep(ms / 1000)
