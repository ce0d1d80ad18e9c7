"""A fake Vertex AI Gemini server plus a fake Google OAuth token endpoint, on a real Hypercorn.

    from fake_vertex import open_fake_vertex

    async with open_fake_vertex(reply="Hello.") as fake:
        # fake.endpoint == "http://127.0.0.1:PORT", fake.api_key == "fake-vertex-key"
        sa_path = fake.write_service_account(tmp_path)   # a key file whose token_uri is ours
        fake.fail_next(429)                               # next model call: RESOURCE_EXHAUSTED
        ...
        assert fake.requests[-1].json["contents"] == [...]

Wire format, as Vertex v1: ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}
:generateContent`` or ``:streamGenerateContent?alt=sse`` (express mode: ``/v1/publishers/google/
models/{m}:...``), authenticated by ``x-goog-api-key`` / ``?key=`` or by ``Authorization: Bearer``
with a token this fake issued. Errors are Google's ``{"error": {"code", "message", "status"}}``.
Answers carry ``candidates`` (a ``thought`` part first when ``thoughts`` is set, then the
reply), ``finishReason``, ``usageMetadata`` (prompt = :func:`prompt_tokens_of`, candidates =
tokens of the text sent, thoughts = ``thoughts_tokens``, cached = ``cached_tokens``),
``modelVersion`` and ``responseId`` (the request's ``FakeRequest.upstream_id``, in every
event of a stream too; no ``apim-request-id``: Google sends none). Streams send ``data: {...}\\r\\n\\r\\n`` events, one thought
event, one per reply piece, with ``finishReason`` and ``usageMetadata`` only in the last, and
no ``[DONE]``. ``block_reason`` answers a blocked prompt (``promptFeedback``, no candidates).
``maxOutputTokens`` bounds thoughts + reply (``MAX_TOKENS``).

Token endpoint: ``POST /token`` with the JWT-bearer grant; the assertion's RS256 signature is
verified with the service account's public key, and ``aud``, ``iss`` and ``scope`` checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import attrs
import hypercorn.config
import hypercorn.trio
import jwt
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_azure import FakeRequest
from fake_wire import send_response, start

from omixa.engine.tokens import count_text, encoding

DEFAULT_REPLY = "Gemini says the quick brown fox jumps over the lazy dog."
DEFAULT_THOUGHT = "**Thinking about foxes** The user wants a sentence about a fox."
API_KEY = "fake-vertex-key"
CLIENT_EMAIL = "omixa-test@fake-project.iam.gserviceaccount.com"
# The responseId of the answer to the request being served (set in its own task).
_RESPONSE_ID: ContextVar[str] = ContextVar("_RESPONSE_ID", default="fakeresp")
_PATH = re.compile(
    r"/v1/(?:projects/([^/]+)/locations/([^/]+)/)?publishers/google/models/([^/:]+)"
    r":(generateContent|streamGenerateContent)"
)
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
           504: "DEADLINE_EXCEEDED"}  # fmt: skip
IMAGE_TOKENS = 258


def google_error(code: int, message: str | None = None) -> dict[str, Any]:
    status = _STATUS.get(code, "UNKNOWN")
    return {"error": {"code": code, "message": message or f"Fake Vertex failure ({status}).", "status": status}}


def prompt_tokens_of(body: dict[str, Any]) -> int:
    """What the fake reports as ``promptTokenCount``: o200k tokens of every text part (system
    instruction included), 258 per inline image, 4 per turn."""
    total = 0
    turns = list(body.get("contents") or ())
    if body.get("systemInstruction"):
        turns.append(body["systemInstruction"])
    for turn in turns:
        total += 4
        for part in turn.get("parts") or ():
            if "text" in part:
                total += count_text(part["text"])
            elif "inlineData" in part:
                total += IMAGE_TOKENS
    return total


@attrs.define(kw_only=True)
class FakeVertex:
    endpoint: str = ""
    api_key: str = API_KEY
    # --- knobs ---
    reply: str = DEFAULT_REPLY
    thoughts: str | None = DEFAULT_THOUGHT  # the thought part's text (None: no thought part)
    thoughts_tokens: int = 0
    cached_tokens: int = 0
    model_version: str = "gemini-2.5-flash"
    block_reason: str | None = None  # e.g. "PROHIBITED_CONTENT": the prompt is blocked
    finish_reason: str = "STOP"  # when the reply is not cut by maxOutputTokens
    chunks: int | None = None  # stream pieces: None = one per word
    first_delay: float = 0.0
    chunk_delay: float = 0.0
    stall_after: int | None = None  # streams: after N pieces, stop sending (stay open)
    token_lifetime: int = 3599  # expires_in of issued tokens
    token_delay: float = 0.0  # seconds before the token endpoint answers
    # --- observations ---
    requests: list[FakeRequest] = attrs.field(factory=list)
    token_requests: int = 0
    tokens_issued: list[str] = attrs.field(factory=list)
    streams_started: int = 0
    streams_finished: int = 0
    streams_disconnected: int = 0
    _private_key: Any = attrs.field(default=None, init=False)
    _failures: list[tuple[int, bytes]] = attrs.field(factory=list, init=False)
    _token_failures: list[tuple[int, bytes]] = attrs.field(factory=list, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    @property
    def token_uri(self) -> str:
        return f"{self.endpoint}/token"

    def write_service_account(self, folder: Path, *, project_id: str | None = "fake-project") -> Path:
        """Write a service-account key file whose ``token_uri`` is this fake; its public key
        is the one assertions are verified with."""
        if self._private_key is None:
            self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        info = {"type": "service_account", "private_key_id": "fake-key-1", "private_key": pem,
                "client_email": CLIENT_EMAIL, "client_id": "1", "token_uri": self.token_uri}  # fmt: skip
        if project_id:
            info["project_id"] = project_id
        path = Path(folder) / "service-account.json"
        path.write_text(json.dumps(info), encoding="utf-8")
        return path

    def fail_next(self, status: int, body: Any = None, count: int = 1) -> None:
        """Answer the next ``count`` model calls with ``status`` and Google's error envelope
        (or ``body``: a dict/list sent as JSON, str/bytes as is)."""
        body = google_error(status) if body is None else body
        raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        self._failures.extend([(status, raw.encode() if isinstance(raw, str) else raw)] * count)

    def fail_token_next(self, status: int, error: str = "invalid_grant", count: int = 1) -> None:
        raw = json.dumps({"error": error, "error_description": f"Fake token failure ({error})."}).encode()
        self._token_failures.extend([(status, raw)] * count)

    async def wait_until(self, predicate: Callable[[FakeVertex], bool]) -> None:
        while not predicate(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- the ASGI app ---
    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while (message := await receive())["type"] == "http.request":
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = dict(parse_qsl(scope["query_string"].decode(), keep_blank_values=True))
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if scope["path"] == "/token":
            return await self._token(send, raw)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        match = _PATH.fullmatch(scope["path"])
        self.requests.append(FakeRequest(scope["method"], scope["path"], query, headers, body,
                                         match.group(3) if match else None))  # fmt: skip
        _RESPONSE_ID.set(self.requests[-1].upstream_id)
        self._notify()
        if not match or scope["method"] != "POST":
            return await _json(send, 404, google_error(404, "The requested URL was not found."))
        key = headers.get("x-goog-api-key") or query.get("key")
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.api_key and bearer not in self.tokens_issued:
            return await _json(send, 401, google_error(401, "Request had invalid authentication credentials."))
        if self._failures:
            status, raw = self._failures.pop(0)
            return await send_response(send, status, raw, [(b"content-type", b"application/json")])
        if not isinstance(body, dict) or not body.get("contents"):
            return await _json(
                send, 400, google_error(400, "Unable to submit request because it has an empty contents field.")
            )
        if match.group(4) == "streamGenerateContent":
            if query.get("alt") != "sse":
                return await _json(send, 400, google_error(400, "This fake only streams with alt=sse."))
            self.streams_started += 1
            self._notify()
            if await self._watch(receive, self._stream(send, body)):
                self.streams_finished += 1
                self._notify()
                await send({"type": "http.response.body", "body": b""})
            return
        await trio.sleep(self.first_delay)
        await _json(send, 200, self._response(body))

    async def _token(self, send: Any, raw: bytes) -> None:
        self.token_requests += 1
        self._notify()
        await trio.sleep(self.token_delay)
        if self._token_failures:
            status, body = self._token_failures.pop(0)
            return await send_response(send, status, body, [(b"content-type", b"application/json")])
        form = dict(parse_qsl(raw.decode()))
        try:
            assert form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
            claims = jwt.decode(form.get("assertion", ""), self._private_key.public_key(),
                                algorithms=["RS256"], audience=self.token_uri)  # fmt: skip
            assert claims["iss"] == CLIENT_EMAIL
            assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
            assert claims["exp"] - claims["iat"] <= 3600
        except (AssertionError, jwt.PyJWTError, KeyError, AttributeError) as exc:
            error = {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc!r}"}
            return await _json(send, 400, error)
        token = f"ya29.fake-{len(self.tokens_issued) + 1}"
        self.tokens_issued.append(token)
        await _json(send, 200, {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"})

    async def _watch(self, receive: Any, work: Any) -> bool:
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
            self.streams_disconnected += 1
            self._notify()
        return not gone

    def _answer(self, body: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        text, finish = self.reply, self.finish_reason
        cap = (body.get("generationConfig") or {}).get("maxOutputTokens")
        if isinstance(cap, int):
            room = max(cap - self.thoughts_tokens, 0)
            ids = encoding("o200k_base").encode_ordinary(text)
            if len(ids) > room:
                text, finish = encoding("o200k_base").decode(ids[:room]), "MAX_TOKENS"
        n = (body.get("generationConfig") or {}).get("candidateCount") or 1
        prompt = prompt_tokens_of(body)
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": count_text(text) * n,
                 "totalTokenCount": prompt + count_text(text) * n + self.thoughts_tokens,
                 "trafficType": "ON_DEMAND",
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}  # fmt: skip
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        return text, finish, usage

    def _head(self) -> dict[str, Any]:
        return {"modelVersion": self.model_version, "createTime": "2026-11-25T22:00:00.000000Z",
                "responseId": _RESPONSE_ID.get()}  # fmt: skip

    def _blocked(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = prompt_tokens_of(body)
        return {"promptFeedback": {"blockReason": self.block_reason,
                                   "blockReasonMessage": "The prompt could not be submitted."},
                "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt},
                **self._head()}  # fmt: skip

    def _response(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.block_reason:
            return self._blocked(body)
        text, finish, usage = self._answer(body)
        n = (body.get("generationConfig") or {}).get("candidateCount") or 1
        parts = ([{"text": self.thoughts, "thought": True}] if self.thoughts else []) + [{"text": text}]
        candidates = [{"content": {"role": "model", "parts": parts}, "finishReason": finish,
                       "avgLogprobs": -0.1, "index": i} for i in range(n)]  # fmt: skip
        return {"candidates": candidates, "usageMetadata": usage, **self._head()}

    async def _stream(self, send: Any, body: dict[str, Any]) -> None:
        await start(send, 200, [(b"content-type", b"text/event-stream")])
        await trio.sleep(self.first_delay)
        head = self._head()
        if self.block_reason:
            return await _event(send, self._blocked(body))
        text, finish, usage = self._answer(body)
        n = (body.get("generationConfig") or {}).get("candidateCount") or 1

        def event(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
            candidates = []
            for i in range(n):
                candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": i}
                if last:
                    candidate["finishReason"] = finish
                candidates.append(candidate)
            out = {"candidates": candidates, **head}
            if last:
                out["usageMetadata"] = usage
            return out

        if self.thoughts:
            await _event(send, event([{"text": self.thoughts, "thought": True}], False))
        pieces = _pieces(text, self.chunks) or [""]
        for i, piece in enumerate(pieces):
            if i == self.stall_after:
                await trio.sleep_forever()
            if i:
                await trio.sleep(self.chunk_delay)
            await _event(send, event([{"text": piece}], i == len(pieces) - 1))


def _pieces(text: str, chunks: int | None) -> list[str]:
    if chunks is None:
        return re.findall(r"\s*\S+|\s+$", text)
    size = len(text)
    return [text[i * size // chunks : (i + 1) * size // chunks] for i in range(chunks)]


async def _event(send: Any, data: dict[str, Any]) -> None:
    raw = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\r\n\r\n"
    await send({"type": "http.response.body", "body": raw, "more_body": True})


async def _json(send: Any, status: int, data: Any) -> None:
    await send_response(send, status, json.dumps(data).encode(), [(b"content-type", b"application/json")])


@asynccontextmanager
async def open_fake_vertex(**knobs: Any) -> AsyncIterator[FakeVertex]:
    """Serve a :class:`FakeVertex` on ``127.0.0.1`` at a free port until the block ends."""
    fake = FakeVertex(**knobs)
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, fake, config, mode="asgi"))
        fake.endpoint = binds[0]
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
