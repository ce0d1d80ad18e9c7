"""The model catalog (``config/models.toml``): what is sold, at what price, and cost arithmetic.

Prices are held as integer nano-dollars per 1M tokens. A request's cost is
``ceil((uncached_prompt * input + cached * cached_input + completion * output) / 1e6)``
nano-dollars: exact whenever prices have at most 3 decimals (all shipped ones do), and
otherwise rounded up once per request, never per token.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import attrs
import cattrs

from engine.money import parse_usd
from engine.providers.base import Usage
from engine.tokens import IMAGE_PART_TOKENS

MILLION = 1_000_000
_REPO_CATALOG = Path(__file__).resolve().parent.parent / "config" / "models.toml"
_INSTALLED_CATALOG = Path(sys.prefix) / "share" / "omixa" / "models.toml"


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
        raise CatalogError(f"{where}: write prices as strings, e.g. \"0.15\"")
    try:
        nano = parse_usd(value, field=where)
    except ValueError as exc:
        raise CatalogError(str(exc)) from None
    if nano < 0:
        raise CatalogError(f"{where}: must not be negative")
    return nano


def _model(model_id: str, raw: Mapping[str, Any]) -> ModelInfo:
    raw = dict(raw)
    prices_raw = raw.pop("prices", None)
    if not isinstance(prices_raw, dict) or "input" not in prices_raw:
        raise CatalogError(f"models.{model_id}.prices: needs at least input")
    fields = {f.name for f in attrs.fields(Prices)}
    unknown = set(prices_raw) - fields
    if unknown:
        raise CatalogError(f"models.{model_id}.prices: unknown keys {sorted(unknown)}")
    prices = {k: _price(v, f"models.{model_id}.prices.{k}") for k, v in prices_raw.items()}
    prices.setdefault("cached_input", prices["input"])
    try:
        return cattrs.Converter(forbid_extra_keys=True).structure(
            {**raw, "id": model_id, "prices": prices}, ModelInfo
        )
    except Exception as exc:
        details = "; ".join(cattrs.transform_error(exc, path=f"models.{model_id}"))
        raise CatalogError(details) from None


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
        raise CatalogError(f"{file}: expected only [models.\"ID\"] tables")
    return Catalog({mid: _model(mid, spec) for mid, spec in models.items()})
