"""``GET /api/v1/openapi.json``: an OpenAPI 3.1 description of every ``/api/v1`` route.

Written by hand next to the routes (the routes take raw JSON, so there is nothing to derive
it from); ``tests/test_openapi.py`` checks that every ``/api/v1`` route of the app, with each
of its methods, is described here, and that every described operation exists.
"""

from __future__ import annotations

from typing import Any

from omixa.engine.catalog import EFFORTS
from omixa.engine.chat_request import MAX_CHOICES, ROLES, SERVICE_TIERS, VERBOSITIES
from omixa.engine.embeddings import ENCODING_FORMATS, MAX_INPUTS, MAX_TOKEN_ID
from omixa.engine.errors import OmixaError
from omixa.engine.images import MAX_IMAGES, MAX_PROMPT_CHARS
from omixa.engine.reports import MAX_IDEMPOTENCY_KEY, MAX_PAGE
from omixa.web.wallet_api import EARLIEST, LATEST, MAX_FILTER_CHARS

MONEY = {"type": "string", "pattern": r"^-?\d+\.\d{2,9}$", "description": "Exact USD amount as a decimal string"}
TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, milliseconds"}
# A query parameter is refused past this length, and a URL holding a NUL anywhere (no id,
# filter or name has one).
QUERY_TEXT = {"type": "string", "maxLength": MAX_FILTER_CHARS, "pattern": r"^[^\x00]*$"}
# What parse_time takes: Unix seconds (11 digits reach past the year 5000), or RFC 3339 with an
# upper-case T and a timezone, in the years a filter can name. The pattern gives the shape and
# the years, "date-time" the calendar (no 31 April); a pattern cannot see that an offset moves
# the first or the last day past the bounds (1970-01-01T00:00:00+01:00), which is refused too.
TIME_FILTER = {
    "anyOf": [
        {"type": "string", "pattern": r"^[0-9]{1,11}$"},
        {
            "type": "string",
            "format": "date-time",
            "pattern": r"^(19[7-9][0-9]|[2-8][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
            r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$",
        },
    ],
    "description": (
        f"Unix seconds, or RFC 3339 with a timezone (2026-11-25T10:00:00Z); from "
        f"{EARLIEST:%Y-%m-%dT%H:%M:%SZ} to before {LATEST:%Y-%m-%dT%H:%M:%SZ}"
    ),
}
# A string holding something other than whitespace (Python's str.isspace, which the server uses).
NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
MODEL_ID = {"type": "string", "minLength": 1, "description": "A catalog model id with an enabled deployment here"}
# JSON values Python takes as true: what "has tool_calls" means on an assistant message.
TRUTHY: dict[str, Any] = {"not": {"enum": [None, False, 0, "", [], {}]}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _list(item: str) -> dict[str, Any]:
    return _obj(
        ["object", "data", "first_id", "last_id", "has_more"],
        object={"const": "list"},
        data={"type": "array", "items": _ref(item)},
        first_id=_nullable({"type": "string"}),
        last_id=_nullable({"type": "string"}),
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
    "Error": _obj(
        ["error"],
        error=_obj(
            ["code", "message", "type", "request_id"],
            code={"type": "string", "enum": _error_codes()},
            message={"type": "string"},
            type={"type": "string"},
            request_id={"type": "string", "pattern": "^req_[0-9a-f]{24}$"},
        ),
    ),
    "Wallet": _obj(
        ["object", "balance", "locked_balance", "available", "currency"],
        object={"const": "wallet"},
        balance=MONEY,
        locked_balance=MONEY,
        available=MONEY,
        currency={"const": "USD"},
    ),
    "TopUpRequest": {
        **_obj(
            ["amount"],
            amount={
                "anyOf": [
                    {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,9})?$", "not": {"pattern": r"^0*(\.0*)?$"}},
                    {"type": "number", "exclusiveMinimum": 0, "multipleOf": 1e-9},
                ],
                "description": (
                    "USD, more than 0 with at most 9 decimals; wallet.top_up_min_usd to wallet.top_up_max_usd"
                ),
            },
        ),
        "additionalProperties": False,
    },
    "TopUp": _obj(
        ["object", "amount", "transaction"],
        object={"const": "wallet.top_up"},
        amount=MONEY,
        transaction=_ref("Transaction"),
    ),
    "Transaction": _obj(
        ["id", "object", "type", "amount", "balance_after", "locked_after", "request_id", "created_at"],
        id={"type": "string", "pattern": "^txn_[0-9]+$"},
        object={"const": "wallet.transaction"},
        type={"enum": ["top_up", "hold", "release", "charge", "refund", "adjustment"]},
        amount=MONEY,
        balance_after=MONEY,
        locked_after=MONEY,
        request_id=_nullable({"type": "string"}),
        created_at=TIME,
    ),
    "TransactionList": _list("Transaction"),
    "UsageRequest": _obj(
        [
            "id",
            "object",
            "model",
            "provider",
            "region",
            "key_id",
            "status",
            "stream",
            "prompt_tokens",
            "completion_tokens",
            "reasoning_tokens",
            "cached_tokens",
            "total_tokens",
            "cost",
            "latency_ms",
            "ttft_ms",
            "created_at",
        ],
        id={"type": "string"},
        object={"const": "usage.request"},
        model={"type": "string"},
        provider={"type": "string"},
        region=_nullable({"type": "string"}),
        key_id={"type": "string"},
        status={"type": "string", "description": "ok, client_closed, interrupted, or an error code"},
        stream={"type": "boolean"},
        prompt_tokens={"type": "integer"},
        completion_tokens={"type": "integer"},
        reasoning_tokens={"type": "integer"},
        cached_tokens={"type": "integer"},
        total_tokens={"type": "integer"},
        cost=MONEY,
        latency_ms={"type": "integer"},
        ttft_ms=_nullable({"type": "integer"}),
        created_at=TIME,
    ),
    "UsageRequestList": _list("UsageRequest"),
    "UsageBucket": _obj(
        [
            "object",
            "start",
            "end",
            "model",
            "requests",
            "errors",
            "client_closed",
            "prompt_tokens",
            "completion_tokens",
            "reasoning_tokens",
            "cached_tokens",
            "total_tokens",
            "cost",
            "latency_ms_mean",
            "latency_ms_p95",
        ],
        object={"const": "usage.bucket"},
        start=TIME,
        end=TIME,
        model=_nullable({"type": "string"}),
        requests={"type": "integer"},
        errors={"type": "integer"},
        client_closed={"type": "integer"},
        prompt_tokens={"type": "integer"},
        completion_tokens={"type": "integer"},
        reasoning_tokens={"type": "integer"},
        cached_tokens={"type": "integer"},
        total_tokens={"type": "integer"},
        cost=MONEY,
        latency_ms_mean=_nullable({"type": "number"}),
        latency_ms_p95=_nullable({"type": "integer", "description": "At most 10% above the true p95"}),
    ),
    "RollupList": _obj(
        ["object", "granularity", "since", "until", "data"],
        object={"const": "list"},
        granularity={"enum": ["hour", "day"]},
        since=TIME,
        until=TIME,
        data={"type": "array", "items": _ref("UsageBucket")},
    ),
    "Model": {
        **_obj(
            ["id", "object", "owned_by", "provider", "modality", "pricing"],
            id={"type": "string"},
            object={"const": "model"},
            owned_by={"type": "string"},
            provider={"enum": ["azure", "vertex"]},
            modality={"enum": ["chat", "embedding", "image"]},
            pricing={"type": "object", "description": "USD per 1M tokens, decimal strings"},
        ),
        "additionalProperties": True,
    },
    "ModelList": _obj(["object", "data"], object={"const": "list"}, data={"type": "array", "items": _ref("Model")}),
    "ChatCompletionRequest": {
        **_obj(
            ["model", "messages"],
            model=MODEL_ID,
            messages={"type": "array", "items": _ref("ChatMessage"), "minItems": 1},
            stream={"type": "boolean"},
            stream_options=_nullable({"type": "object"}),
            n=_nullable({"type": "integer", "minimum": 1, "maximum": MAX_CHOICES}),
            max_tokens=_nullable({"type": "integer", "minimum": 1}),
            max_completion_tokens=_nullable({"type": "integer", "minimum": 1}),
            reasoning_effort=_nullable({"enum": list(EFFORTS)}),
            verbosity=_nullable({"enum": list(VERBOSITIES)}),
            service_tier=_nullable({"enum": list(SERVICE_TIERS)}),
        ),
        # stream_options only goes with "stream": true.
        "anyOf": [
            {"not": {"required": ["stream_options"]}},
            {"properties": {"stream_options": {"type": "null"}}},
            {"required": ["stream"], "properties": {"stream": {"const": True}}},
        ],
        "additionalProperties": True,
        "description": (
            "OpenAI's chat completion request; other fields are forwarded. The model's "
            "max_output_tokens and context_window bound the caps and the prompt (docs/api.md)"
        ),
    },
    "ChatMessage": {
        **_obj(
            ["role"],
            role={"enum": sorted(ROLES)},
            content={"anyOf": [{"type": "string"}, {"type": "array", "items": _ref("ContentPart")}, {"type": "null"}]},
        ),
        # content may be missing or null only on an assistant message that calls a tool.
        "anyOf": [
            {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
            {"required": ["tool_calls"], "properties": {"role": {"const": "assistant"}, "tool_calls": TRUTHY}},
            {"required": ["function_call"], "properties": {"role": {"const": "assistant"}, "function_call": TRUTHY}},
        ],
        "additionalProperties": True,
    },
    "ContentPart": {**_obj(["type"], type={"type": "string"}), "additionalProperties": True},
    "ChatCompletion": {
        **_obj(
            [],
            id={"type": "string"},
            object={"const": "chat.completion"},
            model={"type": "string"},
            choices={
                "type": "array",
                "items": _obj(
                    [],
                    index={"type": "integer"},
                    message={"type": "object"},
                    finish_reason=_nullable({"type": "string"}),
                ),
            },
            usage={"type": "object"},
        ),
        "description": "OpenAI's chat.completion object, as the upstream sent it",
    },
    # One event of a stream (an OpenAPI 3.1 document has no other way to describe them).
    "ChatCompletionEvent": {
        **_obj(
            ["data"],
            data={
                "anyOf": [
                    {"const": "[DONE]"},
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": {"type": "object"}},
                ]
            },
        ),
        "description": (
            "data: a chat.completion.chunk, or the error envelope that ends a failed stream, or "
            "[DONE]; comment lines (padding, heartbeats) carry no event"
        ),
    },
    "EmbeddingRequest": {
        **_obj(
            ["model", "input"],
            model=MODEL_ID,
            input={
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "minItems": 1,
                        "maxItems": MAX_INPUTS,
                    },
                    _ref("TokenIds"),
                    {"type": "array", "items": _ref("TokenIds"), "minItems": 1, "maxItems": MAX_INPUTS},
                ]
            },
            dimensions=_nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "description": "At most the model's vector size, on models that take it",
                }
            ),
            encoding_format=_nullable({"enum": list(ENCODING_FORMATS)}),
            user=_nullable({"type": "string"}),
        ),
        "additionalProperties": True,
        "description": "Other fields are forwarded. Each input is at most the model's context_window tokens",
    },
    "TokenIds": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}, "minItems": 1},
    "EmbeddingList": {
        **_obj(
            [],
            object={"const": "list"},
            model={"type": "string"},
            usage={"type": "object"},
            data={
                "type": "array",
                "items": _obj(
                    [],
                    object={"const": "embedding"},
                    index={"type": "integer"},
                    embedding={
                        "anyOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string", "description": "base64 of little-endian float32"},
                        ]
                    },
                ),
            },
        ),
        "description": "OpenAI's embeddings list, as the upstream sent it",
    },
    "ImageRequest": {
        **_obj(
            ["model", "prompt"],
            model=MODEL_ID,
            prompt={"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": NOT_BLANK},
            n={"type": "integer", "minimum": 1, "maximum": MAX_IMAGES},
            size={"enum": ["1024x1024", "1024x1536", "1536x1024", "auto"]},
            quality={"enum": ["low", "medium", "high", "auto"]},
            response_format=_nullable({"const": "b64_json"}),
            stream={"enum": [False, None]},
        ),
        "additionalProperties": True,
        "description": "OpenAI's image generation request (gpt-image-1); other fields are forwarded",
    },
    "ImageResponse": {
        **_obj(
            [],
            created={"type": "integer"},
            usage={"type": "object"},
            data={"type": "array", "items": _obj([], b64_json={"type": "string"})},
        ),
        "description": "OpenAI's images response, as the upstream sent it",
    },
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
    # A path parameter is one segment: no "/", and no NUL (refused anywhere in a path).
    schema = {"type": "string", "minLength": 1, "pattern": r"^[^/\x00]+$"}
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


AUTHED = (401, 503)
LIST_PARAMS = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 20}, "Page size"),
    _query("after", QUERY_TEXT, "The last_id of the previous page"),
]

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/chat/completions": {
        "post": {
            "summary": "Chat completion, JSON or SSE stream",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
            },
            "responses": {
                "200": {
                    "description": (
                        "A chat.completion, or with stream=true an SSE stream of chat.completion.chunk events"
                        " ending with data: [DONE]"
                    ),
                    "content": {
                        "application/json": {"schema": _ref("ChatCompletion")},
                        "text/event-stream": {"schema": _ref("ChatCompletionEvent")},
                    },
                },
                **_error_responses(400, *AUTHED, 402, 404, 413, 429, 502, 504),
            },
        }
    },
    "/api/v1/embeddings": {
        "post": {
            "summary": "Embeddings, billed from the upstream's prompt tokens",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("EmbeddingRequest")}}},
            "responses": {**_ok("EmbeddingList"), **_error_responses(400, *AUTHED, 402, 404, 413, 429, 502, 504)},
        }
    },
    "/api/v1/images/generations": {
        "post": {
            "summary": "Image generation (gpt-image-1)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ImageRequest")}}},
            "responses": {**_ok("ImageResponse"), **_error_responses(400, *AUTHED, 402, 404, 413, 429, 502, 504)},
        }
    },
    "/api/v1/models": {
        "get": {
            "summary": "Models you can call, with prices",
            "responses": {**_ok("ModelList"), **_error_responses(*AUTHED)},
        }
    },
    "/api/v1/models/{model_id}": {
        "get": {
            "summary": "One model you can call",
            "parameters": [_path("model_id", "The catalog model id")],
            "responses": {**_ok("Model"), **_error_responses(*AUTHED, 404)},
        }
    },
    "/api/v1/wallet": {
        "get": {
            "summary": "Balance, locked balance and available amount",
            "responses": {**_ok("Wallet"), **_error_responses(*AUTHED)},
        }
    },
    "/api/v1/wallet/top-up": {
        "post": {
            "summary": "Credit your own wallet (when wallet.self_top_up is on)",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    # HTTP drops a header value's surrounding spaces, so one of only spaces is empty.
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_IDEMPOTENCY_KEY,
                        "pattern": r"[^ \t]",
                    },
                    "description": "Retries with the same key credit once and return the first result",
                }
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TopUpRequest")}}},
            "responses": {
                **_ok(
                    "TopUp", "Credited, or the first result of this Idempotency-Key (header Idempotent-Replayed: true)"
                ),
                **_error_responses(400, *AUTHED, 403, 409, 413),
            },
        }
    },
    "/api/v1/wallet/transactions": {
        "get": {
            "summary": "Every movement of your wallet, newest first",
            "parameters": LIST_PARAMS,
            "responses": {**_ok("TransactionList"), **_error_responses(400, *AUTHED, 404)},
        }
    },
    "/api/v1/wallet/transactions/{txn_id}": {
        "get": {
            "summary": "One wallet movement",
            "parameters": [_path("txn_id", "txn_...")],
            "responses": {**_ok("Transaction"), **_error_responses(*AUTHED, 404)},
        }
    },
    "/api/v1/usage/requests": {
        "get": {
            "summary": "Per-request logs, newest first",
            "parameters": LIST_PARAMS
            + [
                _query("model", QUERY_TEXT, "Only this model"),
                _query("status", QUERY_TEXT, "Only this status (ok, client_closed, interrupted, an error code)"),
                _query("since", TIME_FILTER, "Created at or after"),
                _query("until", TIME_FILTER, "Created before"),
            ],
            "responses": {**_ok("UsageRequestList"), **_error_responses(400, *AUTHED, 404)},
        }
    },
    "/api/v1/usage/requests/{request_id}": {
        "get": {
            "summary": "One request's log",
            "parameters": [_path("request_id", "The request's x-request-id")],
            "responses": {**_ok("UsageRequest"), **_error_responses(*AUTHED, 404)},
        }
    },
    "/api/v1/usage/rollups": {
        "get": {
            "summary": "Hourly or daily usage sums",
            "parameters": [
                _query("granularity", {"enum": ["hour", "day"], "default": "hour"}, "UTC hours or days"),
                _query("since", TIME_FILTER, "First bucket (rounded down)"),
                _query("until", TIME_FILTER, "End, exclusive (rounded down)"),
                _query("model", QUERY_TEXT, "Only this model"),
                _query("group_by", {"enum": ["model"]}, "One bucket per model"),
            ],
            "responses": {**_ok("RollupList"), **_error_responses(400, *AUTHED)},
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}
            },
        }
    },
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
