"""The model catalog (``config/models.toml``): what is sold, at what price, and cost arithmetic.

Prices are held as integer nano-dollars per 1M tokens. A request's cost is
``ceil((uncached_prompt * input + cached * cached_input + completion * output) / 1e6)``
nano-dollars: exact whenever prices have at most 3 decimals (all shipped ones do), and
otherwise rounded up once per request, never per token.

The catalog also carries what a model family accepts, so a new model is a data change:
the reasoning efforts it supports (:data:`EFFORTS` is the scale a requested value is mapped
along to the nearest supported one), whether it takes ``verbosity``, its priority-tier
prices, an embedding model's vector size, and an image model's output tokens and price per
image by quality and size.
"""

from __future__ import annotations

import datetime as dt
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

from omixa.engine.money import parse_usd
from omixa.engine.tokens import IMAGE_PART_TOKENS
from omixa.engine.upstream import Usage

MILLION = 1_000_000
_REPO_CATALOG = Path(__file__).resolve().parent.parent / "config" / "models.toml"
_INSTALLED_CATALOG = Path(sys.prefix) / "share" / "omixa" / "models.toml"


# Reasoning efforts from least to most; a value a model lacks maps to its nearest neighbour
# on this scale (a tie goes to the lower effort: faster and cheaper).
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


class CatalogError(Exception):
    """The catalog file is missing or invalid; the message names the model and key."""


@attrs.frozen(kw_only=True)
class Prices:
    """Nano-dollars per 1M tokens."""

    input: int
    cached_input: int
    output: int = 0
    image_input: int = 0
    cached_image_input: int = 0
    image_output: int = 0


@attrs.frozen(kw_only=True)
class ModelInfo:
    id: str
    provider: Literal["azure", "vertex"]
    modality: Literal["chat", "embedding", "image"]
    encoding: str
    context_window: int
    max_output_tokens: int
    reasoning: bool
    prices: Prices
    # The most one image part of a prompt can cost, in tokens (the hold counts this much).
    image_tokens: int = IMAGE_PART_TOKENS
    # Reasoning efforts the model accepts, in EFFORTS order; empty: no reasoning_effort is
    # sent (for a reasoning model: the client's value is passed on as sent).
    reasoning_efforts: tuple[str, ...] = ()
    # Takes OpenAI's ``verbosity`` (the gpt-5 family); otherwise it is removed.
    verbosity: bool = False
    # The date of the model version served (the API's "created").
    released: dt.date | None = None
    # Prices of Azure Priority processing; None: the model has no priority tier.
    priority_prices: Prices | None = None
    # Embedding models: the vector size, and whether ``dimensions`` may shorten it.
    dimensions: int = 0
    custom_dimensions: bool = False
    # Image models: output tokens and nano-dollars per image, by quality, then size.
    image_output_tokens: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict)
    image_prices: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict)

    def effort_for(self, requested: str) -> str | None:
        """The supported effort nearest to ``requested`` (a value of :data:`EFFORTS`);
        None when the model takes no effort at all."""
        if not self.reasoning_efforts:
            return requested if self.reasoning else None
        if requested in self.reasoning_efforts:
            return requested
        rank = EFFORTS.index(requested)
        return min(self.reasoning_efforts, key=lambda e: (abs(EFFORTS.index(e) - rank), EFFORTS.index(e)))

    def prices_for(self, service_tier: str | None) -> Prices:
        """The prices of the tier an answer reports (priority, else standard)."""
        if service_tier == "priority" and self.priority_prices is not None:
            return self.priority_prices
        return self.prices


def cost_of(usage: Usage, prices: Prices) -> int:
    """Nano-dollars for ``usage`` at ``prices`` (rounded up once)."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    units = (
        (usage.prompt_tokens - cached) * prices.input
        + cached * prices.cached_input
        + usage.completion_tokens * prices.output
    )
    return -(-units // MILLION)


def max_cost(prompt_tokens: int, output_tokens: int, prices: Prices) -> int:
    """The most a request can cost: no cache discount, every output token used."""
    return cost_of(Usage(prompt_tokens=prompt_tokens, completion_tokens=output_tokens), prices)


def affordable_output_tokens(budget: int, prompt_tokens: int, prices: Prices) -> int:
    """The largest output cap whose :func:`max_cost` fits in ``budget`` nano-dollars."""
    if prices.output <= 0:
        return sys.maxsize
    room = budget * MILLION - prompt_tokens * prices.input
    return max(room // prices.output, 0)


def _price(value: Any, where: str) -> int:
    if not isinstance(value, str):
        raise CatalogError(f'{where}: write prices as strings, e.g. "0.15"')
    try:
        nano = parse_usd(value, field=where)
    except ValueError as exc:
        raise CatalogError(str(exc)) from None
    if nano < 0:
        raise CatalogError(f"{where}: must not be negative")
    return nano


def _prices(raw: Any, where: str) -> dict[str, int]:
    if not isinstance(raw, dict) or "input" not in raw:
        raise CatalogError(f"{where}: needs at least input")
    unknown = set(raw) - {f.name for f in attrs.fields(Prices)}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    prices = {k: _price(v, f"{where}.{k}") for k, v in raw.items()}
    prices.setdefault("cached_input", prices["input"])
    return prices


def _per_image(raw: Any, where: str) -> dict[str, dict[str, int]]:
    """``{quality: {size: "USD"}}`` as nano-dollars per image."""
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise CatalogError(f'{where}: expected {{quality = {{size = "USD"}}}}')
    return {q: {s: _price(v, f"{where}.{q}.{s}") for s, v in sizes.items()} for q, sizes in raw.items()}


def _date(value: Any, _: type) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    raise ValueError(f"expected a TOML date (released = 2025-08-07), got {value!r}")


_CONVERTER = cattrs.Converter(forbid_extra_keys=True)
_CONVERTER.register_structure_hook(dt.date, _date)


def _model(model_id: str, raw: Mapping[str, Any]) -> ModelInfo:
    raw = dict(raw)
    where = f"models.{model_id}"
    fields: dict[str, Any] = {"id": model_id, "prices": _prices(raw.pop("prices", None), f"{where}.prices")}
    if "priority_prices" in raw:
        fields["priority_prices"] = _prices(raw.pop("priority_prices"), f"{where}.priority_prices")
    if "image_prices" in raw:
        fields["image_prices"] = _per_image(raw.pop("image_prices"), f"{where}.image_prices")
    try:
        model = _CONVERTER.structure({**raw, **fields}, ModelInfo)
    except Exception as exc:
        details = "; ".join(cattrs.transform_error(exc, path=where))
        raise CatalogError(details) from None
    _check_model(model, where)
    return model


def _check_model(model: ModelInfo, where: str) -> None:
    efforts = model.reasoning_efforts
    if efforts and not model.reasoning:
        raise CatalogError(f"{where}.reasoning_efforts: only a reasoning model takes efforts")
    if any(e not in EFFORTS for e in efforts) or list(efforts) != sorted(set(efforts), key=EFFORTS.index):
        raise CatalogError(f"{where}.reasoning_efforts: a subset of {list(EFFORTS)}, in that order")
    if model.modality == "embedding" and model.dimensions < 1:
        raise CatalogError(f"{where}.dimensions: an embedding model needs its vector size")
    if model.modality == "image":
        tokens, prices = model.image_output_tokens, model.image_prices
        shape = {q: set(s) for q, s in tokens.items()}
        if not tokens or shape != {q: set(s) for q, s in prices.items()}:
            raise CatalogError(
                f"{where}: an image model needs image_output_tokens and image_prices for the same qualities and sizes"
            )


@attrs.frozen
class Catalog:
    models: Mapping[str, ModelInfo]

    def get(self, model_id: str) -> ModelInfo | None:
        return self.models.get(model_id)


def default_catalog_path() -> Path:
    """The shipped catalog: the source tree's, else the installed copy."""
    return _REPO_CATALOG if _REPO_CATALOG.exists() else _INSTALLED_CATALOG


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and check a catalog file. Errors: CatalogError."""
    file = path or default_catalog_path()
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"{file}: catalog not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{file}: not valid TOML: {exc}") from None
    models = raw.get("models")
    if not isinstance(models, dict) or set(raw) != {"models"}:
        raise CatalogError(f'{file}: expected only [models."ID"] tables')
    return Catalog({mid: _model(mid, spec) for mid, spec in models.items()})
