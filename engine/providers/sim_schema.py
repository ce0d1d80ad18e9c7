"""A JSON value that validates against a JSON schema: the simulator's structured outputs and
tool-call arguments.

What it honours: ``type`` (one or a list), ``const``, ``enum``, ``$ref`` (JSON pointers into
the root schema: ``#/$defs/...``, ``#/definitions/...``, ``#``, with sibling keys merged in),
``anyOf``/``oneOf`` (one branch), ``allOf`` (merged), objects (``properties``, ``required``,
``additionalProperties``, ``minProperties``), arrays (``items``, ``prefixItems``,
``minItems``/``maxItems``, ``uniqueItems``), strings (``minLength``/``maxLength`` and the common
``format`` values), integers and numbers (``minimum``/``maximum``, their exclusive forms and
``multipleOf``), booleans and null. That covers what Pydantic models and the SDKs' strict
schemas produce. ``pattern``, ``not`` and ``if``/``then`` are not honoured.

Values are drawn from a ``random.Random`` the caller seeds, so the same schema and seed give
the same value. Below :data:`MAX_DEPTH` nesting levels a value has only what its schema
requires (no optional properties, the fewest items, the ``null`` branch of an ``anyOf``), so
a recursive schema (a tree of nodes) still ends.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import random
import uuid
from collections.abc import Sequence
from typing import Any

# Nesting level past which only what the schema requires is generated.
MAX_DEPTH = 5
# Nesting level at which a schema that still requires more (a required recursive property)
# gets no deeper value: an empty object, whatever it asks.
_GIVE_UP_DEPTH = 32
_MAX_ITEMS = 3  # the most array items drawn when the schema allows more
# Bounds on what a schema can make one value hold (its own minItems, minLength...): past
# them a value is cut short, and may not validate, rather than fill the memory.
MAX_VALUES = 5_000
_MAX_MIN_ITEMS = 256
_MAX_MIN_LENGTH = 4_096
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


class SchemaValues:
    """Draws values for one root schema (which ``$ref`` pointers are resolved against).

    Args:
        root: the JSON schema (a dict, or ``True``/``{}`` for any value).
        rng: seeded by the caller; each value drawn advances it.
        words: the words strings are made of.
    """

    def __init__(self, root: Any, rng: random.Random, words: Sequence[str]) -> None:
        self._root = root
        self._rng = rng
        self._words = words
        self._left = MAX_VALUES

    def value(self) -> Any:
        """A value of the root schema."""
        return self._value(self._root, 0)

    def _value(self, schema: Any, depth: int) -> Any:
        self._left -= 1
        if not isinstance(schema, dict):
            return None if schema is False else self._string({}, depth)
        schema = self._flatten(schema, depth)
        if depth >= _GIVE_UP_DEPTH or self._left <= 0:
            kind = self._type(schema, depth)
            return {} if kind == "object" else [] if kind == "array" else self._scalar(kind, schema, depth)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return copy.deepcopy(self._rng.choice(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                # A level deeper, so that a branch referring back to its own schema ends.
                return self._value({**rest, **self._pick(options, depth)}, depth + 1)
        kind = self._type(schema, depth)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        return self._scalar(kind, schema, depth)

    def _scalar(self, kind: str, schema: dict[str, Any], depth: int) -> Any:
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, depth)

    # -- composition -----------------------------------------------------------------

    def _flatten(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """``schema`` with its ``$ref`` resolved and its ``allOf`` merged in (siblings win)."""
        for _ in range(_GIVE_UP_DEPTH):
            if "$ref" in schema:
                target = self._resolve(schema["$ref"])
                schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            elif isinstance(schema.get("allOf"), list):
                merged = {k: v for k, v in schema.items() if k != "allOf"}
                for part in schema["allOf"]:
                    merged = _merge(self._flatten(part, depth) if isinstance(part, dict) else {}, merged)
                schema = merged
            else:
                break
        return schema

    def _resolve(self, ref: Any) -> dict[str, Any]:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}  # a remote reference: nothing to follow, so any value
        node: Any = self._root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node if isinstance(node, dict) else {}

    def _pick(self, options: list[Any], depth: int) -> dict[str, Any]:
        """One branch; deep down, the ``null`` one if there is one (it ends a recursion)."""
        branches = [o if isinstance(o, dict) else {} for o in options]
        nulls = [b for b in branches if b.get("type") == "null"]
        others = [b for b in branches if b.get("type") != "null"]
        if nulls and (depth >= MAX_DEPTH or not others or self._rng.random() < 0.25):
            return nulls[0]
        return self._rng.choice(others)

    def _type(self, schema: dict[str, Any], depth: int) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k in _TYPES]
            if not kinds:
                return "string"
            if "null" in kinds and len(kinds) > 1 and depth < MAX_DEPTH:
                kinds.remove("null")
            return "null" if depth >= MAX_DEPTH and "null" in kinds else self._rng.choice(kinds)
        if kind in _TYPES:
            return kind
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    # -- containers ------------------------------------------------------------------

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
        extra = schema.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or (depth < MAX_DEPTH and self._rng.random() < 0.6):
                out[name] = self._value(sub, depth + 1)
        for name in required:
            if name not in out:
                out[name] = self._value(extra if isinstance(extra, dict) else {}, depth + 1)
        wanted = min(_int(schema.get("minProperties"), 0), len(self._words))
        free = "properties" not in schema and "additionalProperties" not in schema
        if (free or (not properties and isinstance(extra, dict))) and depth < MAX_DEPTH:
            wanted = max(wanted, self._rng.randint(1, 2))  # a map (``dict[str, X]``): a key or two
        wanted = min(wanted, _int(schema.get("maxProperties"), wanted))
        tries = 0
        while len(out) < wanted and extra is not False and tries < 4 * len(self._words):
            tries += 1
            key = self._rng.choice(self._words)
            if key not in out:
                out[key] = self._value(extra if isinstance(extra, dict) else {}, depth + 1)
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft 4's tuple form
            prefix, items = items, schema.get("additionalItems", {})
        low = min(_int(schema.get("minItems"), 0), _MAX_MIN_ITEMS)
        high = _int(schema.get("maxItems"), low + _MAX_ITEMS)
        if depth >= MAX_DEPTH:
            count = low
        else:
            count = self._rng.randint(min(max(low, 1), high), max(low, min(high, _MAX_ITEMS)))
        out = [self._value(p, depth + 1) for p in (prefix or [])[:count]] if isinstance(prefix, list) else []
        unique = schema.get("uniqueItems") is True
        seen = {_key(v) for v in out}
        tries = 0
        while len(out) < count and items is not False and tries < 20 + 4 * count:
            tries += 1
            value = self._value(items if isinstance(items, dict) else {}, depth + 1)
            if unique and _key(value) in seen and len(out) >= low:
                break  # fewer distinct items than hoped for, but enough
            if not unique or _key(value) not in seen:
                out.append(value)
                seen.add(_key(value))
        return out

    # -- scalars ---------------------------------------------------------------------

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        fmt = schema.get("format")
        text = self._formatted(fmt) if isinstance(fmt, str) else None
        if text is None:
            count = self._rng.randint(1, 4)
            text = " ".join(self._rng.choice(self._words) for _ in range(count)).capitalize()
        low = min(_int(schema.get("minLength"), 0), _MAX_MIN_LENGTH)
        while len(text) < low:
            text += " " + self._rng.choice(self._words)
        high = schema.get("maxLength")
        return text[:high] if isinstance(high, int) and not isinstance(high, bool) and high >= low else text

    def _formatted(self, fmt: str) -> str | None:
        rng = self._rng
        when = _EPOCH + dt.timedelta(minutes=rng.randrange(2 * 365 * 24 * 60))
        if fmt == "date-time":
            return when.strftime("%Y-%m-%dT%H:%M:%SZ")
        if fmt == "date":
            return when.strftime("%Y-%m-%d")
        if fmt == "time":
            return when.strftime("%H:%M:%SZ")
        if fmt == "duration":
            return f"PT{rng.randint(1, 59)}M"
        if fmt in ("email", "idn-email"):
            return f"{rng.choice(self._words)}@example.com"
        if fmt in ("uri", "url", "iri", "uri-reference", "iri-reference"):
            return f"https://example.com/{rng.choice(self._words)}"
        if fmt in ("hostname", "idn-hostname"):
            return f"{rng.choice(self._words)}.example.com"
        if fmt == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if fmt == "ipv4":
            return f"192.0.2.{rng.randint(1, 254)}"
        if fmt == "ipv6":
            return f"2001:db8::{rng.randint(1, 0xFFFF):x}"
        return None

    def _integer(self, schema: dict[str, Any]) -> int:
        low, high = _bounds(schema)
        lo = None if low is None else math.floor(low) + 1 if _excludes(schema, "Minimum", low) else math.ceil(low)
        hi = None if high is None else math.ceil(high) - 1 if _excludes(schema, "Maximum", high) else math.floor(high)
        least, most = _span(lo, hi, 100)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first, last = -(-least // step), most // step
            if first <= last:
                return self._rng.randint(first, last) * step
        return self._rng.randint(least, most) if least <= most else least

    def _number(self, schema: dict[str, Any]) -> float | int:
        low, high = _bounds(schema)
        lo, hi = _span(low, high, 100)
        step: Any = schema.get("multipleOf")
        if _is_number(step) and step > 0 and math.isfinite(lo / step) and math.isfinite(hi / step):
            first, last = math.ceil(lo / step), math.floor(hi / step)
            if first <= last:
                return self._rng.randint(first, last) * step
        for _ in range(8):
            value = round(self._rng.uniform(lo, hi), 2)
            if (
                lo <= value <= hi
                and not (value == low and _excludes(schema, "Minimum", low))
                and not (value == high and _excludes(schema, "Maximum", high))
            ):
                return value
        return (lo + hi) / 2


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None]:
    """The schema's lower and upper bounds, from either draft's way of writing them."""
    low = schema.get("minimum") if _is_number(schema.get("minimum")) else None
    high = schema.get("maximum") if _is_number(schema.get("maximum")) else None
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if _is_number(ex_low) and (low is None or ex_low >= low):
        low = ex_low
    if _is_number(ex_high) and (high is None or ex_high <= high):
        high = ex_high
    return low, high


def _excludes(schema: dict[str, Any], side: str, bound: Any) -> bool:
    """Whether ``bound`` (from :func:`_bounds`) is itself excluded: draft 4's boolean
    ``exclusiveMinimum``, or a numeric ``exclusiveMinimum`` that set it (same for Maximum)."""
    flag = schema.get("exclusive" + side)
    return flag is True or (_is_number(flag) and flag == bound)


def _span(low: Any, high: Any, width: int) -> tuple[Any, Any]:
    """``low`` and ``high`` with a missing side set ``width`` away (around 0 when both are)."""
    if low is None and high is None:
        return 0, width
    if low is None:
        return min(high, 0), high
    if high is None:
        return low, max(low, 0) + width
    return low, high


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``allOf`` parts merged: properties and required lists joined, other keys overridden."""
    out = {**base, **over}
    if isinstance(base.get("properties"), dict) and isinstance(over.get("properties"), dict):
        out["properties"] = {**base["properties"], **over["properties"]}
    if isinstance(base.get("required"), list) and isinstance(over.get("required"), list):
        out["required"] = list(dict.fromkeys(base["required"] + over["required"]))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
