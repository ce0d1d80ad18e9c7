"""The component schemas of the Responses API's routes in Omixa's OpenAPI document
(:mod:`omixa.web.http.openapi`), beside :mod:`omixa.web.http.openapi_schemas`'s. Bounds and
enumerations come from the engine's checks (:mod:`omixa.engine.responses_request`).
"""

from __future__ import annotations

from typing import Any

from omixa.engine.catalog import EFFORTS
from omixa.engine.chat_request import SERVICE_TIERS, VERBOSITIES
from omixa.engine.responses_request import ITEM_TYPES, TOOL_TYPES
from omixa.web.http.openapi_schemas import MODEL_ID, STREAM_OPTIONS_ONLY_WITH_STREAM, TRUTHY, _nullable, _obj, _ref

# Content parts, or something else (a tool's output may be a string).
PARTS_OR_OTHER = {"anyOf": [{"not": {"type": "array"}}, {"type": "array", "items": _ref("ResponseContentPart")}]}
# The id of a stored item sent back.
STORED_ID = {"type": "string", "minLength": 1}

RESPONSE_SCHEMAS: dict[str, Any] = {
    "ResponseRequest": {
        **_obj(
            ["model", "input"],
            model=MODEL_ID,
            input={
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": _ref("ResponseInputItem"), "minItems": 1},
                ]
            },
            instructions=_nullable({"type": "string"}),
            previous_response_id=_nullable({"type": "string", "minLength": 1}),
            stream=_nullable({"type": "boolean"}),
            stream_options=_nullable({"type": "object"}),
            store=_nullable({"type": "boolean"}),
            max_output_tokens=_nullable({"type": "integer", "minimum": 1}),
            reasoning=_nullable(_obj([], effort=_nullable({"enum": list(EFFORTS)}))),
            text=_nullable(_obj([], verbosity=_nullable({"enum": list(VERBOSITIES)}))),
            service_tier=_nullable({"enum": list(SERVICE_TIERS)}),
            tools=_nullable({"type": "array", "items": _obj(["type"], type={"enum": list(TOOL_TYPES)})}),
            background={"enum": [False, None]},
            conversation={"enum": [False, None]},
            prompt={"enum": [False, None]},
        ),
        "anyOf": STREAM_OPTIONS_ONLY_WITH_STREAM,
        "additionalProperties": True,
        "description": (
            "OpenAI's Responses API request; other fields are forwarded. Built-in tools and their "
            "items, background responses, conversations, stored prompts, and files by id or URL are "
            "refused; items by reference must be yours (docs/api.md)"
        ),
    },
    # A message (no type, or "message") has a role and content; an item_reference, and a
    # reasoning item without its encrypted_content, name a stored item by id; content parts,
    # in a message or a tool's output, name no file by id or URL.
    "ResponseInputItem": {
        "type": "object",
        "properties": {
            "type": {"enum": sorted(ITEM_TYPES)},
            "content": PARTS_OR_OTHER,
            "output": PARTS_OR_OTHER,
        },
        "anyOf": [
            {
                "not": {"required": ["type"]},
                "required": ["role", "content"],
                "properties": {"role": {"type": "string"}, "content": {"type": ["string", "array"]}},
            },
            {
                "required": ["type", "role", "content"],
                "properties": {
                    "type": {"const": "message"},
                    "role": {"type": "string"},
                    "content": {"type": ["string", "array"]},
                },
            },
            {"required": ["type", "id"], "properties": {"type": {"const": "item_reference"}, "id": STORED_ID}},
            {"required": ["type", "id"], "properties": {"type": {"const": "reasoning"}, "id": STORED_ID}},
            {
                "required": ["type", "encrypted_content"],
                "properties": {"type": {"const": "reasoning"}, "encrypted_content": TRUTHY},
            },
            {
                "required": ["type"],
                "properties": {"type": {"not": {"enum": ["message", "item_reference", "reasoning"]}}},
            },
        ],
        "additionalProperties": True,
    },
    "ResponseContentPart": {
        **_obj(["type"], type={"type": "string"}, file_id={"type": "null"}, file_url={"type": "null"}),
        "additionalProperties": True,
    },
    "Response": {
        **_obj(
            [],
            id={"type": "string"},
            object={"const": "response"},
            status={"type": "string"},
            model={"type": "string"},
            output={"type": "array", "items": {"type": "object"}},
            usage=_nullable({"type": "object"}),
        ),
        "description": "OpenAI's response object, as the upstream sent it",
    },
    "DeletedResponse": _obj(
        ["id", "deleted"], id={"type": "string"}, object={"type": "string"}, deleted={"type": "boolean"}
    ),
    "ResponseInputItems": {
        **_obj(["object", "data"], object={"const": "list"}, data={"type": "array", "items": {"type": "object"}}),
        "description": "Azure's list of the response's input items, as it sent it",
    },
    "ResponseEvent": {
        **_obj(
            ["data"],
            event={"type": "string"},
            data={"type": "string", "contentMediaType": "application/json", "contentSchema": {"type": "object"}},
        ),
        "description": (
            "event: the event's type (response.created, response.output_text.delta, ..., "
            "response.completed; error for a failed stream), data: the event as JSON; comment lines "
            "(padding, heartbeats) carry no event"
        ),
    },
}
