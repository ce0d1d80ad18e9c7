"""The component schemas of Omixa's OpenAPI document (:mod:`omixa.web.http.openapi`).

Bounds and enumerations are imported from the engine's checks, so the document states what
the routes enforce.
"""

from __future__ import annotations

from typing import Any

from omixa.engine.catalog import EFFORTS
from omixa.engine.chat_request import MAX_CHOICES, ROLES, SERVICE_TIERS, VERBOSITIES
from omixa.engine.embeddings import ENCODING_FORMATS, MAX_INPUTS, MAX_TOKEN_ID
from omixa.engine.errors import UPSTREAM_CODE, OmixaError, RateLimited
from omixa.engine.images import MAX_IMAGES, MAX_PROMPT_CHARS
from omixa.web.http.wallet_api import EARLIEST, LATEST, MAX_FILTER_CHARS

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


# A body whose stream_options is set and not null has "stream": true.
STREAM_OPTIONS_ONLY_WITH_STREAM = [
    {"not": {"required": ["stream_options"]}},
    {"properties": {"stream_options": {"type": "null"}}},
    {"required": ["stream"], "properties": {"stream": {"const": True}}},
]


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


def _error_classes() -> list[type[OmixaError]]:
    classes, pending = [], [OmixaError]
    while pending:
        cls = pending.pop()
        classes.append(cls)
        pending += cls.__subclasses__()
    return classes


def _error_codes() -> list[str]:
    return sorted({cls.code for cls in _error_classes()})


def _error_types() -> list[str]:
    return sorted({cls.type for cls in _error_classes()} | set(RateLimited.LIMITS))


SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        ["error"],
        error=_obj(
            ["message", "type", "param", "code", "request_id"],
            message={"type": "string"},
            type={"type": "string", "enum": _error_types()},
            param=_nullable(
                {"type": "string", "description": "The request field at fault, e.g. messages[0].role; else null"}
            ),
            code={
                "anyOf": [
                    {"type": "string", "enum": _error_codes()},
                    {
                        "type": "string",
                        "pattern": f"^{UPSTREAM_CODE.pattern}$",
                        "description": (
                            "A 400 for a request the upstream refused as the request's own fault carries the "
                            "upstream's code, e.g. content_filter or context_length_exceeded"
                        ),
                    },
                ]
            },
            request_id={"type": "string", "pattern": "^req_[0-9a-f]{24}$"},
            innererror={
                "type": "object",
                "description": (
                    "Only with an upstream's refusal that gave one: Azure's verdict on the request, e.g. "
                    '{"code": "ResponsibleAIPolicyViolation", "content_filter_result": {...}}'
                ),
            },
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
            "upstream_request_id",
            "error_message",
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
        upstream_request_id={
            **_nullable({"type": "string"}),
            "description": "The upstream's id of the call that answered (Azure's apim-request-id, "
            "Vertex's responseId); null when it named none",
        },
        error_message={
            **_nullable({"type": "string"}),
            "description": "For a request that ended in an error (its code is status): the message it "
            "was answered with, at most 1,000 characters; null otherwise",
        },
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
        model=_nullable({"type": "string", "description": "The model, with group_by=model; else null"}),
        key_id={
            "type": "string",
            "description": "Only with group_by=key: the key (empty for requests recorded without one)",
        },
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
        "anyOf": STREAM_OPTIONS_ONLY_WITH_STREAM,
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
            ["prompt"],
            model=_nullable({**MODEL_ID, "description": "Left out: the first image model of the catalog served here"}),
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
