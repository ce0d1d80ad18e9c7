"""``GET /api/v1/models`` and ``GET /api/v1/models/{id}``: the models this gateway sells.

A model is listed when it is in the catalog and has at least one enabled deployment, in
catalog order, as an OpenAI model object with Omixa's additions: ``provider``,
``modality``, limits, the reasoning efforts it accepts, and its prices as exact decimal
strings in USD (per 1M tokens; per image where that applies; the priority tier where the
model has one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from omixa.engine.catalog import ModelInfo, Prices
from omixa.engine.errors import ModelNotFound
from omixa.engine.money import format_usd
from omixa.engine.runtime import Engine
from omixa.web.http.envelope import json_response


def register(app: QuartTrio, engine: Engine, authenticate: Callable[[], Awaitable[Any]]) -> None:
    """Add the catalog routes to ``app``; both need a key."""

    @app.get("/api/v1/models")
    async def list_models() -> Response:
        await authenticate()
        enabled = engine.router.models()
        data = [model_object(m) for m in engine.catalog.models.values() if m.id in enabled]
        return json_response({"object": "list", "data": data})

    @app.get("/api/v1/models/<model_id>")
    async def get_model(model_id: str) -> Response:
        await authenticate()
        model = engine.catalog.get(model_id)
        if model is None or model_id not in engine.router.models():
            raise ModelNotFound(f"The model '{model_id}' does not exist or is not enabled.")
        return json_response(model_object(model))


def _created(model: ModelInfo) -> int:
    """The model version's release date as Unix seconds (midnight UTC); 0 when the catalog
    does not say."""
    if model.released is None:
        return 0
    return int(dt.datetime.combine(model.released, dt.time(), dt.UTC).timestamp())


def model_object(model: ModelInfo) -> dict[str, Any]:
    """One model as the API shows it."""
    obj: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": _created(model),
        "owned_by": model.provider,
        "provider": model.provider,
        "modality": model.modality,
        "context_window": model.context_window,
        "max_output_tokens": model.max_output_tokens,
        "reasoning": model.reasoning,
        "reasoning_efforts": list(model.reasoning_efforts),
        "verbosity": model.verbosity,
        "pricing": _pricing(model),
    }
    if model.modality == "embedding":
        obj["dimensions"] = model.dimensions
        obj["custom_dimensions"] = model.custom_dimensions
    return obj


def _tokens(prices: Prices) -> dict[str, str]:
    return {
        "input": format_usd(prices.input),
        "cached_input": format_usd(prices.cached_input),
        "output": format_usd(prices.output),
    }


def _pricing(model: ModelInfo) -> dict[str, Any]:
    prices = model.prices
    pricing: dict[str, Any] = {"unit": "USD per 1M tokens", **_tokens(prices)}
    if model.priority_prices is not None:
        pricing["priority"] = _tokens(model.priority_prices)
    if model.modality == "image":
        pricing.update(
            image_input=format_usd(prices.image_input),
            cached_image_input=format_usd(prices.cached_image_input),
            image_output=format_usd(prices.image_output),
            per_image={"unit": "USD per image", **_per_image(model.image_prices)},
        )
    return pricing


def _per_image(table: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, str]]:
    return {quality: {size: format_usd(nano) for size, nano in sizes.items()} for quality, sizes in table.items()}
