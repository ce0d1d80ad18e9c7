"""A fake Azure OpenAI server (chat completions, embeddings, image generations, and the
Responses API: tests/fake_azure_responses.py): a plain ASGI app on a real Hypercorn (loopback).

Use it from any test (``tests/`` is on ``sys.path`` under pytest)::

    from fake_azure import open_fake_azure

    async def test_something():
        async with open_fake_azure(reply="Hello there.") as fake:
            # fake.endpoint == "http://127.0.0.1:PORT", fake.api_key == "fake-azure-key"
            fake.chunk_delay = 0.01
            fake.rate_limit_next(7, retry_after_ms=7000)     # next request: 429
            ...                                               # call it
            assert fake.requests[-1].json["messages"] == [...]
            await fake.wait_disconnected()                    # a client went away mid-stream

Wire format, as Azure (api-version 2024-10-21): ``POST /openai/deployments/{name}/chat/completions
?api-version=...`` with an ``api-key`` header. Missing api-version: 400; wrong key: 401; unknown
deployment (when ``deployments`` is set): 404; each with Azure's ``{"error": {"code", "message"}}``.
``fail_next`` sends any status and body, e.g. Azure's own 400 bodies for a content filter
(:func:`content_filter_error`, with its ``innererror``) or a context overflow
(:func:`context_length_error`).
Answers carry ``prompt_filter_results``, ``content_filter_results`` and a full ``usage``. Streams
send the empty-``choices`` prompt-filter frame, a role frame, content frames, a finish frame, a
usage frame (only when ``stream_options.include_usage`` is true) and ``data: [DONE]``.

Usage: ``prompt_tokens = count_chat_prompt(body)``, ``completion_tokens = count_text(text sent)``
(+ ``reasoning_tokens``), unless ``prompt_tokens`` / ``completion_tokens`` are set. The reply is
cut to ``max_completion_tokens`` / ``max_tokens`` tokens (finish_reason ``length``).

Service tier: a chat request that names ``service_tier`` gets it back in the answer (and in
every chunk) as the tier that served it: "priority" for "priority" (unless
``downgrade_priority``), else "default"; ``service_tier`` forces the reported value.

Embeddings (``POST .../embeddings``): one deterministic vector per input, of ``dimensions``
(else ``embedding_dims``) floats, or base64 float32 for ``encoding_format: "base64"``, with
``usage.prompt_tokens`` = the cl100k tokens of the strings plus the length of token arrays.

Images (``POST .../images/generations``, gpt-image-1): ``n`` tiny PNGs as ``b64_json``, with
the reported ``quality`` and ``size`` ("auto" → medium, 1024x1024) and gpt-image-1's ``usage``
(input = the prompt's o200k tokens, output = OpenAI's published tokens per image × n);
``image_usage = False`` leaves the usage out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import attrs
import hypercorn.config
import hypercorn.trio
import trio
from fake_azure_responses import RESPONSES_PATH, ResponsesApi
from fake_wire import APIM_REQUEST_ID, MSG_401, azure_error, event, reply, send_response, start

from omixa.engine.providers.simulator import TINY_PNG
from omixa.engine.tokens import count_chat_prompt, count_text, encoding

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog."
DEFAULT_MODEL = "gpt-4o-2024-11-20"
API_KEY = "fake-azure-key"
_PATH = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|embeddings|images/generations)")
# gpt-image-1's published output tokens per image, by quality and size.
IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}

PNG = TINY_PNG  # a real 1x1 PNG: clients can decode b64_json into an image
_OK = {"filtered": False, "severity": "safe"}
_FILTERS = {"hate": _OK, "self_harm": _OK, "sexual": _OK, "violence": _OK}
_PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": {
    **_FILTERS, "jailbreak": {"filtered": False, "detected": False}}}]  # fmt: skip
MSG_404 = ("The API deployment for this resource does not exist. If you created the deployment "
           "within the last 5 minutes, please wait a moment and try again.")  # fmt: skip


def rate_limit_message(seconds: int, api_version: str = "2024-10-21") -> str:
    """Azure's 429 message, with its "Please retry after N seconds"."""
    return (f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
            f"{api_version} have exceeded token rate limit of your current OpenAI S0 pricing "
            f"tier. Please retry after {seconds} seconds. Please go here: "
            f"https://aka.ms/oai/quotaincrease if you would like to further increase the "
            f"default rate limit.")  # fmt: skip


# What Azure answers (HTTP 400) when its content filter refuses the prompt: OpenAI's error
# object plus ``innererror``, the filter's verdict on each category.
CONTENT_FILTER_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry. To learn more about our content filtering "
    "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
CONTENT_FILTER_INNERERROR = {
    "code": "ResponsibleAIPolicyViolation",
    "content_filter_result": {**_FILTERS, "jailbreak": {"filtered": False, "detected": False},
                              "violence": {"filtered": True, "severity": "medium"}},
}  # fmt: skip


def content_filter_error() -> dict[str, Any]:
    """Azure's 400 body for a prompt its content filter refused (pass it to ``fail_next``)."""
    return {"error": {"message": CONTENT_FILTER_MESSAGE, "type": None, "param": "prompt", "code": "content_filter",
                      "status": 400, "innererror": CONTENT_FILTER_INNERERROR}}  # fmt: skip


def context_length_error(limit: int = 128000, tokens: int = 130000) -> dict[str, Any]:
    """Azure's (OpenAI's) 400 body for a prompt longer than the model's context window."""
    message = (f"This model's maximum context length is {limit} tokens. However, your messages "
               f"resulted in {tokens} tokens. Please reduce the length of the messages.")  # fmt: skip
    return {"error": {"message": message, "type": "invalid_request_error", "param": "messages",
                      "code": "context_length_exceeded"}}  # fmt: skip


@attrs.frozen
class FakeRequest:
    """One request as received: ``query`` and ``headers`` (lower-case names) as dicts, ``json``
    the parsed body (None if it was not JSON), ``deployment`` from the path (or None);
    ``headers["x-ms-client-request-id"]`` is the id the gateway sent with it.
    ``upstream_id``: the upstream's id of this call, a new UUID each, as the answer names it
    (the fake Azure: ``apim-request-id`` on every answer, errors too; the fake Vertex: the
    body's ``responseId``)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    deployment: str | None
    operation: str | None = None  # "chat/completions", "embeddings", "images/generations" or "responses"
    at: float = attrs.field(factory=time.monotonic)  # when it arrived (time.monotonic())
    upstream_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))


@attrs.define(kw_only=True)
class FakeAzure:
    """The server's knobs (set them any time; each request reads them when it arrives) and
    observations (read them; the server writes them). See the module docstring."""

    endpoint: str = ""  # set once the server listens
    api_key: str = API_KEY
    # --- knobs ---
    reply: str = DEFAULT_REPLY  # the answer text (before max_tokens truncation)
    model: str = DEFAULT_MODEL  # the "model" Azure reports
    deployments: set[str] | None = None  # known deployment names; None accepts any
    prompt_tokens: int | None = None  # usage overrides; None computes them
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # added to the computed completion_tokens
    chunks: int | None = None  # content frames: None = one per word, N = N near-equal slices
    first_delay: float = 0.0  # seconds before the answer / the first content frame
    gate: trio.Event | None = None  # if given, what first_delay delays also waits for it to be set
    chunk_delay: float = 0.0  # seconds between content frames
    hang: bool = False  # never answer (read the request, then wait for the client to go)
    stall_after: int | None = None  # streams: after N content frames, stop sending (stay open)
    break_after: int | None = None  # streams: after N content frames, drop the connection
    service_tier: str | None = None  # force the service_tier reported by chat answers
    downgrade_priority: bool = False  # answer "priority" requests at the "default" tier
    embedding_dims: int = 1536  # vector size when the request names no dimensions
    image_usage: bool = True  # image answers carry gpt-image-1's usage
    # --- observations ---
    requests: list[FakeRequest] = attrs.field(factory=list)
    streams_started: int = 0
    streams_finished: int = 0  # [DONE] sent
    streams_disconnected: int = 0  # client went away before [DONE]
    disconnects: int = 0  # any request (stream or hung) abandoned by its client
    stored: dict[str, int] = attrs.field(factory=dict)  # stored response id -> its context tokens
    stored_objects: dict[str, tuple[dict[str, Any], list[Any]]] = attrs.field(factory=dict)  # -> response, input
    _failures: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = attrs.field(factory=list, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None, count: int = 1) -> None:
        """Answer the next ``count`` chat requests with ``status`` (queued after earlier ones).

        ``body``: dict (sent as JSON), str/bytes (sent as is), or None for an Azure error
        envelope ``{"error": {"code": str(status), "message": ...}}``. Any status works,
        200 included (e.g. to send a malformed success body).
        """
        if body is None:
            body = azure_error(str(status), f"Fake upstream failure (HTTP {status}).")
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        raw = raw.encode() if isinstance(raw, str) else raw
        head = [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
        if isinstance(body, dict):
            head.append((b"content-type", b"application/json"))
        self._failures.extend([(status, raw, head)] * count)

    def rate_limit_next(
        self,
        seconds: int = 7,
        *,
        retry_after_ms: int | None = None,
        retry_after: int | str | None = None,
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` requests with Azure's 429 ("Please retry after
        ``seconds`` seconds"), adding ``retry-after-ms`` / ``Retry-After`` only when given."""
        headers: dict[str, str] = {}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        self.fail_next(429, azure_error("429", rate_limit_message(seconds)), headers, count)

    async def wait_until(self, predicate: Callable[[FakeAzure], bool]) -> None:
        """Wait until ``predicate(fake)`` holds, re-checked whenever a request arrives or a
        stream/disconnect counter changes (wrap in ``trio.fail_after``)."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_disconnected(self, count: int = 1) -> None:
        """Wait until ``streams_disconnected >= count`` (wrap in ``trio.fail_after``)."""
        await self.wait_until(lambda fake: fake.streams_disconnected >= count)

    async def _first_wait(self) -> None:
        await trio.sleep(self.first_delay)
        if self.gate is not None:
            await self.gate.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- the ASGI app ---

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while (message := await receive())["type"] == "http.request":
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        match = _PATH.fullmatch(scope["path"])
        query = dict(parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        responses = scope["path"] == RESPONSES_PATH
        self.requests.append(FakeRequest(scope["method"], scope["path"], query, headers, body,
                                         match.group(1) if match else (body.get("model") if responses and isinstance(body, dict) else None),
                                         match.group(2) if match else ("responses" if responses else None)))  # fmt: skip
        APIM_REQUEST_ID.set(self.requests[-1].upstream_id)  # every answer to it names it
        self._notify()
        if responses or scope["path"].startswith(RESPONSES_PATH + "/"):
            return await ResponsesApi(self).serve(scope, receive, send, headers, query, body)
        if not match or scope["method"] != "POST":
            return await reply(send, 404, azure_error("404", "Resource not found"))
        if not query.get("api-version"):
            msg = "The api-version query parameter (?api-version=) is required for all requests."
            return await reply(send, 400, azure_error("MissingApiVersionParameter", msg))
        if headers.get("api-key") != self.api_key:
            return await reply(send, 401, azure_error("401", MSG_401))
        if self.deployments is not None and match.group(1) not in self.deployments:
            return await reply(send, 404, azure_error("DeploymentNotFound", MSG_404))
        if self._failures:
            status, raw, head = self._failures.pop(0)
            return await send_response(send, status, raw, head)
        if match.group(2) != "chat/completions":
            await self._first_wait()
            answer = self._embeddings if match.group(2) == "embeddings" else self._images
            status, data = answer(body)
            return await reply(send, status, data)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            error = {"message": "'messages' is a required property", "type":
                     "invalid_request_error", "param": None, "code": None}  # fmt: skip
            return await reply(send, 400, {"error": error})
        await self.model_answer(receive, send, body, lambda: self._stream(send, body), lambda: self._completion(body))

    async def model_answer(
        self,
        receive: Any,
        send: Any,
        body: dict[str, Any],
        stream: Callable[[], Awaitable[None]],
        answer: Callable[[], dict[str, Any]],
    ) -> None:
        """A checked model call's answer: none (``hang``), a stream (``stream()``, counted and
        watched for the client leaving) when the body asks for one, else ``answer()`` after
        ``first_delay``."""
        if self.hang:
            await self._watch(receive, trio.sleep_forever(), stream=False)  # noqa: ASYNC105 (awaited by _watch)
            return
        if body.get("stream") is True:
            self.streams_started += 1
            self._notify()
            if await self._watch(receive, stream(), stream=True):
                # Closing the response makes Hypercorn report http.disconnect, so the last
                # (empty) body message is sent after the watch has ended.
                self.streams_finished += 1
                self._notify()
                await send({"type": "http.response.body", "body": b""})
            return
        await self._first_wait()
        await reply(send, 200, answer())

    async def _watch(self, receive: Any, work: Any, *, stream: bool) -> bool:
        """Run ``work`` until it ends (True) or the client disconnects (False)."""
        gone = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal gone
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await work
            nursery.cancel_scope.cancel()
        if gone:
            self.disconnects += 1
            self.streams_disconnected += stream
            self._notify()
        return not gone

    def _answer(self, body: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        text, finish = self.reply, "stop"
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(cap, int):
            ids = encoding("o200k_base").encode_ordinary(text)
            if len(ids) > cap:
                text, finish = encoding("o200k_base").decode(ids[:cap]), "length"
        prompt = count_chat_prompt(body) if self.prompt_tokens is None else self.prompt_tokens
        completion = self.completion_tokens
        if completion is None:
            completion = count_text(text) + self.reasoning_tokens
        usage = {
            "completion_tokens": completion,
            "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0,
                "reasoning_tokens": self.reasoning_tokens, "rejected_prediction_tokens": 0},
            "prompt_tokens": prompt,
            "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": self.cached_tokens},
            "total_tokens": prompt + completion,
        }  # fmt: skip
        return text, finish, usage

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text, finish, usage = self._answer(body)
        message: dict[str, Any] = {"annotations": [], "content": text, "refusal": None, "role": "assistant"}
        choice = {"content_filter_results": _FILTERS, "finish_reason": finish, "index": 0,
                  "logprobs": None, "message": message}  # fmt: skip
        return {"choices": [choice], **self._head("chat.completion", body),
                "prompt_filter_results": _PROMPT_FILTERS, "usage": usage}  # fmt: skip

    def _head(self, obj: str, body: dict[str, Any]) -> dict[str, Any]:
        request_id = f"chatcmpl-fake{len(self.requests):025d}"
        head = {"created": int(time.time()), "id": request_id, "model": self.model,
                "object": obj, "system_fingerprint": "fp_fake0000"}  # fmt: skip
        tier = self.service_tier
        if tier is None and "service_tier" in body:
            asked = body["service_tier"] == "priority" and not self.downgrade_priority
            tier = "priority" if asked else "default"
        if tier is not None:
            head["service_tier"] = tier
        return head

    def _embeddings(self, body: Any) -> tuple[int, dict[str, Any]]:
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return 400, {"error": {"message": "'input' is a required property", "type":
                                   "invalid_request_error", "param": None, "code": None}}  # fmt: skip
        dims = body.get("dimensions") or self.embedding_dims
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            tokens += count_text(item, "cl100k_base") if isinstance(item, str) else len(item)
            seed = hashlib.sha256(json.dumps(item).encode()).digest()
            vector: list[float] | str = [((seed[j % 32] + j) % 200 - 100) / 1000 for j in range(dims)]
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        prompt = tokens if self.prompt_tokens is None else self.prompt_tokens
        return 200, {"object": "list", "data": data, "model": self.model,
                     "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}  # fmt: skip

    def _images(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            return 400, azure_error("invalid_request_error", "'prompt' is a required property")
        n = body.get("n", 1)
        quality = body.get("quality", "auto")
        quality = "medium" if quality == "auto" else quality
        size = body.get("size", "auto")
        size = "1024x1024" if size == "auto" else size
        if quality not in IMAGE_TOKENS or size not in IMAGE_TOKENS[quality]:
            return 400, azure_error("invalid_value", "Invalid quality or size.")
        answer: dict[str, Any] = {
            "created": int(time.time()), "background": "opaque", "output_format": "png",
            "quality": quality, "size": size,
            "data": [{"b64_json": base64.b64encode(PNG).decode()} for _ in range(n)],
        }  # fmt: skip
        if self.image_usage:
            text = count_text(body["prompt"]) if self.prompt_tokens is None else self.prompt_tokens
            output = IMAGE_TOKENS[quality][size] * n if self.completion_tokens is None else self.completion_tokens
            answer["usage"] = {"input_tokens": text, "output_tokens": output, "total_tokens": text + output,
                               "input_tokens_details": {"image_tokens": 0, "text_tokens": text}}  # fmt: skip
        return 200, answer

    def _pieces(self, text: str) -> list[str]:
        if self.chunks is None:
            return re.findall(r"\s*\S+|\s+$", text)
        n, size = self.chunks, len(text)
        return [text[i * size // n : (i + 1) * size // n] for i in range(n)]

    async def _stream(self, send: Any, body: dict[str, Any]) -> None:
        text, finish, usage = self._answer(body)
        head = self._head("chat.completion.chunk", body)

        def frame(delta: dict, filters: dict, reason: str | None) -> dict:
            return {"choices": [{"content_filter_results": filters, "delta": delta,
                    "finish_reason": reason, "index": 0, "logprobs": None}], **head}  # fmt: skip

        await start(send, 200, [(b"content-type", b"text/event-stream; charset=utf-8")])
        await event(send, {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                            "prompt_filter_results": _PROMPT_FILTERS})  # fmt: skip
        await self._first_wait()
        await event(send, frame({"content": "", "refusal": None, "role": "assistant"}, {}, None))
        for i, piece in enumerate(self._pieces(text)):
            if i == self.stall_after:
                await trio.sleep_forever()
            if i == self.break_after:
                raise RuntimeError("fake_azure: dropping the connection (break_after)")
            if i:
                await trio.sleep(self.chunk_delay)
            await event(send, frame({"content": piece}, _FILTERS, None))
        await event(send, frame({}, {}, finish))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            await event(send, {"choices": [], **head, "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})


@asynccontextmanager
async def open_fake_azure(
    *, certfile: str | None = None, keyfile: str | None = None, **knobs: Any
) -> AsyncIterator[FakeAzure]:
    """Serve a :class:`FakeAzure` (``knobs`` are its fields) on ``127.0.0.1`` at a free port,
    over TLS when ``certfile`` and ``keyfile`` are given (``fake.endpoint`` is then https).

    Leaving the block stops the server and any request still in it.
    """
    fake = FakeAzure(**knobs)
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = certfile, keyfile
    config.accesslog = None
    config.errorlog = None  # break_after raises on purpose; keep test output clean
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, fake, config, mode="asgi"))
        fake.endpoint = binds[0]
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
