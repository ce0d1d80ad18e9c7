"""``GET /api/v1/openapi.json``: an OpenAPI 3.1 description of every ``/api/v1`` route.

Written by hand next to the routes (the routes take raw JSON, so there is nothing to derive
it from); ``tests/test_openapi.py`` checks that every ``/api/v1`` route of the app, with each
of its methods, is described here, and that every described operation exists.
"""

from __future__ import annotations

from typing import Any

from engine.errors import OmixaError

MONEY = {"type": "string", "pattern": r"^-?\d+\.\d{2,9}$", "description": "Exact USD amount as a decimal string"}
TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, milliseconds"}
TIME_FILTER = {"type": "string", "description": "RFC 3339 with a timezone, or Unix seconds"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _list(item: str) -> dict[str, Any]:
    return _obj(
        ["object", "data", "first_id", "last_id", "has_more"],
        object={"const": "list"}, data={"type": "array", "items": _ref(item)},
        first_id=_nullable({"type": "string"}), last_id=_nullable({"type": "string"}),
        has_more={"type": "boolean"},
    )


def _error_codes() -> list[str]:
    codes = set()
    pending = [OmixaError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending += cls.__subclasses__()
    return sorted(codes)


SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error=_obj(
        ["code", "message", "type", "request_id"],
        code={"type": "string", "enum": _error_codes()}, message={"type": "string"},
        type={"type": "string"}, request_id={"type": "string", "pattern": "^req_[0-9a-f]{24}$"},
    )),
    "Wallet": _obj(
        ["object", "balance", "locked_balance", "available", "currency"],
        object={"const": "wallet"}, balance=MONEY, locked_balance=MONEY, available=MONEY,
        currency={"const": "USD"},
    ),
    "TopUpRequest": {
        **_obj(["amount"], amount={
            "anyOf": [MONEY | {"pattern": r"^\d+(\.\d{1,9})?$"}, {"type": "number"}],
            "description": "USD; wallet.top_up_min_usd to wallet.top_up_max_usd",
        }),
        "additionalProperties": False,
    },
    "TopUp": _obj(
        ["object", "amount", "transaction"],
        object={"const": "wallet.top_up"}, amount=MONEY, transaction=_ref("Transaction"),
    ),
    "Transaction": _obj(
        ["id", "object", "type", "amount", "balance_after", "locked_after", "request_id", "created_at"],
        id={"type": "string", "pattern": "^txn_[0-9]+$"}, object={"const": "wallet.transaction"},
        type={"enum": ["top_up", "hold", "release", "charge", "refund", "adjustment"]},
        amount=MONEY, balance_after=MONEY, locked_after=MONEY,
        request_id=_nullable({"type": "string"}), created_at=TIME,
    ),
    "TransactionList": _list("Transaction"),
    "UsageRequest": _obj(
        ["id", "object", "model", "provider", "region", "key_id", "status", "stream",
         "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens",
         "total_tokens", "cost", "latency_ms", "ttft_ms", "created_at"],
        id={"type": "string"}, object={"const": "usage.request"}, model={"type": "string"},
        provider={"type": "string"}, region=_nullable({"type": "string"}),
        key_id={"type": "string"},
        status={"type": "string", "description": "ok, client_closed, interrupted, or an error code"},
        stream={"type": "boolean"}, prompt_tokens={"type": "integer"},
        completion_tokens={"type": "integer"}, reasoning_tokens={"type": "integer"},
        cached_tokens={"type": "integer"}, total_tokens={"type": "integer"}, cost=MONEY,
        latency_ms={"type": "integer"}, ttft_ms=_nullable({"type": "integer"}), created_at=TIME,
    ),
    "UsageRequestList": _list("UsageRequest"),
    "UsageBucket": _obj(
        ["object", "start", "end", "model", "requests", "errors", "client_closed",
         "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens",
         "total_tokens", "cost", "latency_ms_mean", "latency_ms_p95"],
        object={"const": "usage.bucket"}, start=TIME, end=TIME,
        model=_nullable({"type": "string"}), requests={"type": "integer"},
        errors={"type": "integer"}, client_closed={"type": "integer"},
        prompt_tokens={"type": "integer"}, completion_tokens={"type": "integer"},
        reasoning_tokens={"type": "integer"}, cached_tokens={"type": "integer"},
        total_tokens={"type": "integer"}, cost=MONEY,
        latency_ms_mean=_nullable({"type": "number"}),
        latency_ms_p95=_nullable({"type": "integer", "description": "At most 10% above the true p95"}),
    ),
    "RollupList": _obj(
        ["object", "granularity", "since", "until", "data"],
        object={"const": "list"}, granularity={"enum": ["hour", "day"]}, since=TIME, until=TIME,
        data={"type": "array", "items": _ref("UsageBucket")},
    ),
    "Model": {
        **_obj(["id", "object", "owned_by", "provider", "modality", "pricing"],
               id={"type": "string"}, object={"const": "model"}, owned_by={"type": "string"},
               provider={"enum": ["azure", "vertex"]},
               modality={"enum": ["chat", "embedding", "image"]},
               pricing={"type": "object", "description": "USD per 1M tokens, decimal strings"}),
        "additionalProperties": True,
    },
    "ModelList": _obj(["object", "data"], object={"const": "list"},
                      data={"type": "array", "items": _ref("Model")}),
    "ChatCompletionRequest": {
        **_obj(["model", "messages"], model={"type": "string"},
               messages={"type": "array", "items": {"type": "object"}, "minItems": 1},
               stream={"type": "boolean"}, max_tokens={"type": "integer"},
               max_completion_tokens={"type": "integer"}, n={"type": "integer"},
               stream_options={"type": "object"}),
        "additionalProperties": True,
        "description": "OpenAI's chat completion request; see docs/api.md for what is checked",
    },
    "ChatCompletion": {"type": "object", "description": "OpenAI's chat.completion object"},
    "EmbeddingRequest": {
        **_obj(["model", "input"], model={"type": "string"},
               input={"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                                {"type": "array", "items": {"type": "integer"}},
                                {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]},
               dimensions={"type": "integer"}, encoding_format={"enum": ["float", "base64"]},
               user={"type": "string"}),
        "additionalProperties": False,
    },
    "EmbeddingList": {"type": "object", "description": "OpenAI's embeddings list (object: list, data, model, usage)"},
    "ImageRequest": {
        **_obj(["model", "prompt"], model={"type": "string"}, prompt={"type": "string"},
               n={"type": "integer", "minimum": 1, "maximum": 10}, size={"type": "string"},
               quality={"type": "string"}, response_format={"const": "b64_json"},
               user={"type": "string"}),
        "additionalProperties": True,
        "description": "OpenAI's image generation request (gpt-image-1); see docs/api.md",
    },
    "ImageResponse": {"type": "object", "description": "OpenAI's images response: created, data[].b64_json, usage"},
}


def _error_responses(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "Error",
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for status in statuses
    }


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


AUTHED = (401, 503)
LIST_PARAMS = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "Page size"),
    _query("after", {"type": "string"}, "The last_id of the previous page"),
]

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/chat/completions": {"post": {
        "summary": "Chat completion, JSON or SSE stream",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}}},
        "responses": {
            "200": {"description": "A chat.completion, or with stream=true an SSE stream of chat.completion.chunk events ending with data: [DONE]",
                    "content": {"application/json": {"schema": _ref("ChatCompletion")},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_error_responses(400, *AUTHED, 402, 404, 413, 429, 502, 504),
        },
    }},
    "/api/v1/embeddings": {"post": {
        "summary": "Embeddings, billed from the upstream's prompt tokens",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("EmbeddingRequest")}}},
        "responses": {**_ok("EmbeddingList"), **_error_responses(400, *AUTHED, 402, 404, 413, 429, 502, 504)},
    }},
    "/api/v1/images/generations": {"post": {
        "summary": "Image generation (gpt-image-1)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ImageRequest")}}},
        "responses": {**_ok("ImageResponse"), **_error_responses(400, *AUTHED, 402, 404, 413, 429, 502, 504)},
    }},
    "/api/v1/models": {"get": {
        "summary": "Models you can call, with prices",
        "responses": {**_ok("ModelList"), **_error_responses(*AUTHED)},
    }},
    "/api/v1/models/{model_id}": {"get": {
        "summary": "One model you can call",
        "parameters": [_path("model_id", "The catalog model id")],
        "responses": {**_ok("Model"), **_error_responses(*AUTHED, 404)},
    }},
    "/api/v1/wallet": {"get": {
        "summary": "Balance, locked balance and available amount",
        "responses": {**_ok("Wallet"), **_error_responses(*AUTHED)},
    }},
    "/api/v1/wallet/top-up": {"post": {
        "summary": "Credit your own wallet (when wallet.self_top_up is on)",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "Retries with the same key credit once and return the first result"}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TopUpRequest")}}},
        "responses": {**_ok("TopUp", "Credited, or the first result of this Idempotency-Key (header Idempotent-Replayed: true)"),
                      **_error_responses(400, *AUTHED, 403, 409, 413)},
    }},
    "/api/v1/wallet/transactions": {"get": {
        "summary": "Every movement of your wallet, newest first",
        "parameters": LIST_PARAMS,
        "responses": {**_ok("TransactionList"), **_error_responses(400, *AUTHED, 404)},
    }},
    "/api/v1/wallet/transactions/{txn_id}": {"get": {
        "summary": "One wallet movement",
        "parameters": [_path("txn_id", "txn_...")],
        "responses": {**_ok("Transaction"), **_error_responses(*AUTHED, 404)},
    }},
    "/api/v1/usage/requests": {"get": {
        "summary": "Per-request logs, newest first",
        "parameters": LIST_PARAMS + [
            _query("model", {"type": "string"}, "Only this model"),
            _query("status", {"type": "string"}, "Only this status (ok, client_closed, interrupted, an error code)"),
            _query("since", TIME_FILTER, "Created at or after"),
            _query("until", TIME_FILTER, "Created before"),
        ],
        "responses": {**_ok("UsageRequestList"), **_error_responses(400, *AUTHED, 404)},
    }},
    "/api/v1/usage/requests/{request_id}": {"get": {
        "summary": "One request's log",
        "parameters": [_path("request_id", "The request's x-request-id")],
        "responses": {**_ok("UsageRequest"), **_error_responses(*AUTHED, 404)},
    }},
    "/api/v1/usage/rollups": {"get": {
        "summary": "Hourly or daily usage sums",
        "parameters": [
            _query("granularity", {"enum": ["hour", "day"], "default": "hour"}, "UTC hours or days"),
            _query("since", TIME_FILTER, "First bucket (rounded down)"),
            _query("until", TIME_FILTER, "End, exclusive (rounded down)"),
            _query("model", {"type": "string"}, "Only this model"),
            _query("group_by", {"enum": ["model"]}, "One bucket per model"),
        ],
        "responses": {**_ok("RollupList"), **_error_responses(400, *AUTHED)},
    }},
    "/api/v1/openapi.json": {"get": {
        "summary": "This document",
        "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}},
    }},
}


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Omixa API",
            "version": version,
            "description": "OpenAI-compatible gateway with a prepaid wallet. See docs/api.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "omx_live_... API key"}},
            "schemas": SCHEMAS,
        },
        "paths": PATHS,
    }
