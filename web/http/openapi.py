"""``GET /api/v1/openapi.json``: an OpenAPI 3.1 description of every ``/api/v1`` route.

Written by hand next to the routes (the routes take raw JSON, so there is nothing to derive
it from); ``tests/test_openapi.py`` checks that every ``/api/v1`` route of the app, with each
of its methods, is described here, and that every described operation exists.
"""

from __future__ import annotations

from typing import Any

from omixa.engine.reports import GROUP_BY, KEY_ID, MAX_IDEMPOTENCY_KEY, MAX_PAGE
from omixa.web.http.openapi_responses import RESPONSE_SCHEMAS
from omixa.web.http.openapi_schemas import QUERY_TEXT, SCHEMAS, TIME_FILTER, _ref
from omixa.web.http.wallet_api import FORMATS


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


def _ok_or_csv(schema: str, csv: str) -> dict[str, Any]:
    """A usage list's 200: JSON, or with format=csv (or Accept: text/csv) a CSV download."""
    return {
        "200": {
            "description": "The list; with format=csv, or Accept: text/csv, the same rows as a CSV file",
            "content": {
                "application/json": {"schema": _ref(schema)},
                "text/csv": {"schema": {"type": "string", "description": csv}},
            },
        }
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    # A path parameter is one segment: no "/", and no NUL (refused anywhere in a path).
    schema = {"type": "string", "minLength": 1, "pattern": r"^[^/\x00]+$"}
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


AUTHED = (401, 503)
# A stored response's lookups: not found (not yours, or gone upstream), a query or Azure's
# refusal, the key's rate limit, the upstream failing.
STORED_ERRORS = _error_responses(400, *AUTHED, 404, 429, 502, 504)
LIST_PARAMS = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 20}, "Page size"),
    _query("after", QUERY_TEXT, "The last_id of the previous page"),
]
# The usage lists' filters and format.
USAGE_FILTERS = [
    _query("model", {**QUERY_TEXT, "minLength": 1}, "Only this model"),
    _query(
        "key_id",
        {"type": "string", "pattern": f"^{KEY_ID.pattern}$"},
        "Only this key of yours (another account's key id matches nothing)",
    ),
]
FORMAT = _query(
    "format",
    {"enum": list(FORMATS), "default": "json"},
    "csv: the rows as a CSV download (streamed); without it, Accept: text/csv does the same",
)

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
    "/api/v1/responses": {
        "post": {
            "summary": "A model response (the Responses API), JSON or SSE stream; Azure models",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ResponseRequest")}}},
            "responses": {
                "200": {
                    "description": (
                        "A response object, or with stream=true an SSE stream of its typed events ending with"
                        " response.completed or response.incomplete"
                    ),
                    "content": {
                        "application/json": {"schema": _ref("Response")},
                        "text/event-stream": {"schema": _ref("ResponseEvent")},
                    },
                },
                **_error_responses(400, *AUTHED, 402, 404, 413, 429, 502, 504),
            },
        }
    },
    # Described after the others: the fuzzer runs operations in this order, and DELETE
    # takes away the response the others look up.
    "/api/v1/responses/{response_id}/input_items": {
        "get": {
            "summary": "The input items of one of your stored responses",
            "parameters": [
                _path("response_id", "The response's id"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "Page size"),
                _query("order", {"enum": ["asc", "desc"], "default": "desc"}, "Oldest or newest first"),
                _query("after", QUERY_TEXT, "An item id: the page after it"),
                _query("before", QUERY_TEXT, "An item id: the page before it"),
                _query("include", QUERY_TEXT, "Passed on (OpenAI's include values)"),
            ],
            "responses": {**_ok("ResponseInputItems"), **STORED_ERRORS},
        }
    },
    "/api/v1/responses/{response_id}/cancel": {
        "post": {
            "summary": "Cancel a background response (Azure refuses any other: 400)",
            "parameters": [_path("response_id", "The response's id")],
            "responses": {**_ok("Response"), **STORED_ERRORS},
        }
    },
    "/api/v1/responses/{response_id}": {
        "get": {
            "summary": "One of your stored responses, from the resource that holds it",
            "parameters": [
                _path("response_id", "The response's id"),
                _query("include", QUERY_TEXT, "Passed on (OpenAI's include values)"),
                _query("stream", {"enum": ["false"]}, "Only background responses stream again: not supported"),
            ],
            "responses": {**_ok("Response"), **STORED_ERRORS},
        },
        "delete": {
            "summary": "Delete one of your stored responses",
            "parameters": [_path("response_id", "The response's id")],
            "responses": {**_ok("DeletedResponse"), **STORED_ERRORS},
        },
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
            + USAGE_FILTERS
            + [
                _query("status", QUERY_TEXT, "Only this status (ok, client_closed, interrupted, an error code)"),
                _query("stream", {"enum": ["true", "false"]}, "Only streamed (true) or unstreamed (false) requests"),
                _query("since", TIME_FILTER, "Created at or after"),
                _query("until", TIME_FILTER, "Created before"),
                FORMAT,
            ],
            "responses": {
                **_ok_or_csv(
                    "UsageRequestList",
                    "A header row, then every matching request (all pages; limit is ignored), newest first;"
                    " the columns are UsageRequest's fields but object",
                ),
                **_error_responses(400, *AUTHED, 404),
            },
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
                *USAGE_FILTERS,
                _query(
                    "group_by",
                    {"enum": list(GROUP_BY)},
                    "One bucket per model, or per key (with key_id); absent: every model and key together",
                ),
                FORMAT,
            ],
            "responses": {
                **_ok_or_csv(
                    "RollupList",
                    "A header row, then the buckets, oldest first; the columns are UsageBucket's fields but object",
                ),
                **_error_responses(400, *AUTHED),
            },
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
            "schemas": {**SCHEMAS, **RESPONSE_SCHEMAS},
        },
        "paths": PATHS,
    }
