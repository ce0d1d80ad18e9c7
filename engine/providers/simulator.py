"""A simulated upstream: Azure-shaped answers with no network (``omixa demo``, load tests).

The answer is pseudo-text picked from a fixed word list with a ``random.Random`` seeded by a
hash of the messages: the same prompt always gets the same answer. Every piece of the word
list is one o200k token, so an answer of N pieces is N tokens; usage is still computed with
:mod:`engine.tokens` from the text itself (prompt = ``count_chat_prompt(body)``, completion =
``count_text(answer)``), so it always agrees with what a client would count.

Timing follows the deployment's ``sim_*`` knobs: the first event after ``sim_first_token_ms``,
then a chunk of ``sim_tokens_per_chunk`` tokens every ``sim_chunk_interval_ms`` (0: no pause).
Frames and objects are shaped like Azure's (``prompt_filter_results``, per-choice
``content_filter_results``, the empty-``choices`` first and usage frames).

Embeddings: one deterministic unit-length vector per input (``dimensions`` floats, else
:data:`EMBEDDING_DIMENSIONS`), as floats or base64 float32, with ``usage.prompt_tokens``
counted with ``cl100k_base`` (token arrays count as their length). Images: ``n`` copies of a
1x1 PNG as ``b64_json``, with the quality and size used ("auto": medium, 1024x1024) and, like
Azure's older image API, no ``usage``, so Omixa charges the catalog's price per image.
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
from contextlib import asynccontextmanager
from typing import Any

import trio

from omixa.engine.config import DeploymentConfig
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import Completion, SseEvent, Usage

# Each word is a single o200k token with a leading space, lower or capitalised, and alone
# capitalised (checked by the tests), so N pieces are N tokens.
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which"
    " but have an they you were her she there one all we their can has more will would about"
    " time people when out other new some these what only could into two may first then do any"
    " like now my over such our man me even most made after also did many before must through"
    " back years where much your way well down should because each just those how too good very"
    " make world still own see men work long get here between both life being under never day"
).split()
_OK = {"filtered": False, "severity": "safe"}
_CONTENT_FILTER = {"hate": _OK, "self_harm": _OK, "sexual": _OK, "violence": _OK}
_PROMPT_FILTER = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            **_CONTENT_FILTER,
            "jailbreak": {"filtered": False, "detected": False},
        },
    }
]
_FIRST_FRAME = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                "prompt_filter_results": _PROMPT_FILTER}  # fmt: skip
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


def answer_pieces(body: dict[str, Any], count: int) -> list[str]:
    """``count`` one-token pieces of sentence-like text, derived only from the body's messages."""
    seed_text = json.dumps(body.get("messages"), sort_keys=True, separators=(",", ":"))
    rng = random.Random(hashlib.sha256(seed_text.encode()).digest())
    pieces: list[str] = []
    left = 0  # pieces left in the current sentence, its closing "." included
    for _ in range(count):
        if left == 0:
            word = rng.choice(WORDS).capitalize()
            pieces.append(" " + word if pieces else word)
            left = rng.randint(6, 14)
        elif left == 1:
            pieces.append(".")
        else:
            pieces.append(" " + rng.choice(WORDS))
        left -= 1
    return pieces


def output_cap(body: dict[str, Any]) -> int | None:
    """The body's ``max_completion_tokens`` (else ``max_tokens``), when it is an integer."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(0, value)
    return None


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

    def _answer(self, body: dict[str, Any]) -> tuple[list[str], str, dict[str, Any]]:
        wanted = self._dep.sim_completion_tokens
        cap = output_cap(body)
        count = wanted if cap is None else min(wanted, cap)
        pieces = answer_pieces(body, count)
        prompt = count_chat_prompt(body)
        completion = count_text("".join(pieces))
        usage = {
            "completion_tokens": completion,
            "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0,
                                          "reasoning_tokens": 0, "rejected_prediction_tokens": 0},
            "prompt_tokens": prompt,
            "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
            "total_tokens": prompt + completion,
        }  # fmt: skip
        return pieces, "stop" if count == wanted else "length", usage

    def _head(self, obj: str) -> dict[str, Any]:
        return {"created": int(time.time()), "id": "chatcmpl-" + secrets.token_hex(14),
                "model": self._dep.model, "object": obj,
                "system_fingerprint": self._fingerprint}  # fmt: skip

    def _chunks(self, pieces: list[str]) -> list[str]:
        size = self._dep.sim_tokens_per_chunk
        return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]

    async def complete(self, body: dict[str, Any]) -> Completion:
        """A full ``chat.completion`` after the time the stream would have taken.

        Cancellation: nothing is held; the sleep simply stops.
        """
        pieces, finish, usage = self._answer(body)
        chunks = len(self._chunks(pieces))
        await _sleep_ms(self._dep.sim_first_token_ms + chunks * self._dep.sim_chunk_interval_ms)
        message: dict[str, Any] = {"annotations": [], "content": "".join(pieces), "refusal": None,
                   "role": "assistant"}  # fmt: skip
        choice = {"content_filter_results": _CONTENT_FILTER, "finish_reason": finish, "index": 0,
                  "logprobs": None, "message": message}  # fmt: skip
        data = {"choices": [choice], **self._head("chat.completion"),
                "prompt_filter_results": _PROMPT_FILTER, "usage": usage}  # fmt: skip
        return Completion(body=json.loads(json.dumps(data)), usage=Usage.from_openai(usage))

    @asynccontextmanager
    async def open_stream(self, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[SseEvent]]:
        """Yield the answer as Azure-shaped SSE events, paced by the ``sim_*`` knobs.

        A usage frame (empty ``choices``) comes before ``[DONE]`` only when
        ``stream_options.include_usage`` is true, as on Azure.
        """
        pieces, finish, usage = self._answer(body)
        head = self._head("chat.completion.chunk")

        def chunk(delta: dict[str, Any], filters: dict[str, Any], reason: str | None) -> dict:
            return {"choices": [{"content_filter_results": filters, "delta": delta,
                                 "finish_reason": reason, "index": 0, "logprobs": None}],
                    **head}  # fmt: skip

        role = {"content": "", "refusal": None, "role": "assistant"}
        frames = [_FIRST_FRAME, chunk(role, {}, None)]
        frames += [chunk({"content": text}, _CONTENT_FILTER, None) for text in self._chunks(pieces)]
        frames.append(chunk({}, {}, finish))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            frames.append({"choices": [], **head, "usage": usage})
        del body  # as a real upstream's stream, this one keeps nothing of its prompt
        yield _SimStream(frames, self._dep.sim_first_token_ms, self._dep.sim_chunk_interval_ms)

    async def embed(self, body: dict[str, Any]) -> Completion:
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

    async def generate_images(self, body: dict[str, Any]) -> Completion:
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

    async def aclose(self) -> None:
        """Nothing to close."""


class _SimStream:
    """Emits prepared frames: the first after ``first_ms``, each content chunk ``every_ms``
    after the previous one; the frames around them (role, finish, usage, [DONE]) at once."""

    __slots__ = ("_frames", "_first_ms", "_every_ms", "_index")

    def __init__(self, frames: list[dict[str, Any]], first_ms: float, every_ms: float) -> None:
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
        frame = self._frames[i]
        if i == 0:
            await _sleep_ms(self._first_ms)
        elif i > 2 and frame["choices"] and frame["choices"][0]["delta"].get("content"):
            await _sleep_ms(self._every_ms)
        raw = b"data: " + json.dumps(frame, separators=(",", ":")).encode() + b"\n\n"
        return SseEvent(raw=raw, data=json.loads(raw[6:]))


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await trio.sleep(ms / 1000)
