"""Checking an image-generation request (``POST /api/v1/images/generations``) and pricing it.

The hold is the most the request can cost: the prompt's text tokens (counted offline) at the
input price, plus, for each of the ``n`` images, the larger of
- the catalog's output tokens for the most expensive quality and size the request allows
  (``auto`` allows every one) at the image output price, and
- the catalog's price per image for that quality and size.

The charge follows the answer's ``usage`` when it has one: text input tokens at the input
price, image input tokens at the image input price, output tokens at the image output
price. Without usage, it is the prompt at the input price plus the catalog's price per
image, for each image returned, at the quality and size the answer reports (else the most
expensive the request allowed). Never more than the hold.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any, ClassVar

import attrs

from omixa.engine.catalog import MILLION, Catalog, ModelInfo, Prices
from omixa.engine.chat_request import resolve_model
from omixa.engine.errors import InternalError, InvalidRequest, ModelNotFound
from omixa.engine.model_call import PlainCall
from omixa.engine.tokens import count_text
from omixa.engine.upstream import MAX_REPORTED_TOKENS, CallIds, Completion, EmbeddingsProvider, Provider, Usage

MAX_IMAGES = 10
MAX_PROMPT_CHARS = 32_000
AUTO = "auto"


@attrs.frozen(kw_only=True)
class ImageUsage(Usage):
    """An image answer's usage. ``prompt_tokens`` includes ``image_prompt_tokens`` (input
    images; none for generations). ``images_cost`` is set when the answer had no usage:
    the catalog price of the images returned, in nano-dollars."""

    image_prompt_tokens: int = 0
    images_cost: int | None = None


@attrs.frozen(kw_only=True)
class ImageRequest(PlainCall):
    """A checked request. ``output_tokens`` is the worst case per image; ``hold_amount``
    the most the request can cost (see the module docstring)."""

    api: ClassVar[str] = "images"

    model: ModelInfo
    body: dict[str, Any]
    prompt_tokens: int
    output_tokens: int
    choices: int  # n
    hold_amount: int
    qualities: tuple[str, ...]  # the qualities and sizes the request allows
    sizes: tuple[str, ...]

    @property
    def estimated_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens * self.choices

    def build_body(self, output_tokens: int) -> dict[str, Any]:
        body = copy.copy(self.body)
        body.pop("response_format", None)  # gpt-image-1 always answers b64_json, and takes no such key
        return body

    async def send(self, provider: Provider, body: dict[str, Any], ids: CallIds) -> Completion:
        # The fleet gives a model only deployments of its provider (or the simulator), and
        # the catalog's generate images models are Azure's: such an adapter has it.
        if not isinstance(provider, EmbeddingsProvider):
            raise InternalError()
        return await provider.generate_images(body, ids)

    def usage_of(self, completion: Completion) -> Usage:
        """The answer's token usage, else the catalog price of the images it returned."""
        body = completion.body
        usage = image_usage(body.get("usage"))
        if usage is not None:
            return usage
        data = body.get("data")
        count = min(len(data), self.choices) if isinstance(data, list) else self.choices
        qualities = (body["quality"],) if body.get("quality") in self.qualities else self.qualities
        sizes = (body["size"],) if body.get("size") in self.sizes else self.sizes
        quality, size = max(
            ((q, s) for q in qualities for s in sizes), key=lambda qs: self.model.image_prices[qs[0]][qs[1]]
        )
        return ImageUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=count * self.model.image_output_tokens[quality][size],
            images_cost=count * self.model.image_prices[quality][size],
        )

    def cost(self, usage: Usage, service_tier: str | None) -> int:
        return image_cost(usage, self.model.prices)


def image_usage(raw: Any) -> ImageUsage | None:
    """gpt-image-1's ``usage`` (``input_tokens``, ``input_tokens_details.image_tokens``,
    ``output_tokens``); None when missing or malformed."""
    if not isinstance(raw, dict):
        return None
    details = raw.get("input_tokens_details")
    prompt, output, image = (
        _token_count(raw.get("input_tokens")),
        _token_count(raw.get("output_tokens")),
        _token_count((details.get("image_tokens") or 0) if isinstance(details, dict) else 0),
    )
    if prompt is None or output is None or image is None:
        return None
    return ImageUsage(prompt_tokens=prompt, completion_tokens=output, image_prompt_tokens=min(image, prompt))


def _token_count(value: Any) -> int | None:
    """``value`` if it is a token count (an int in range), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


def image_cost(usage: Usage, prices: Prices) -> int:
    """Nano-dollars for an image answer's usage (rounded up once)."""
    image_in = usage.image_prompt_tokens if isinstance(usage, ImageUsage) else 0
    text_units = (usage.prompt_tokens - image_in) * prices.input
    if isinstance(usage, ImageUsage) and usage.images_cost is not None:
        return -(-text_units // MILLION) + usage.images_cost
    units = text_units + image_in * prices.image_input + usage.completion_tokens * prices.image_output
    return -(-units // MILLION)


def _allowed(body: dict[str, Any], key: str, table: Collection[str]) -> tuple[str, ...]:
    value = body.get(key, AUTO)
    if value == AUTO:
        return tuple(table)
    if not isinstance(value, str) or value not in table:
        raise InvalidRequest(f"'{key}' must be one of {', '.join([*table, AUTO])}; got {value!r}.", param=key)
    return (value,)


def parse_image_request(body: Any, catalog: Catalog, enabled: Collection[str]) -> ImageRequest:
    """Check an image-generation body and work out its hold.

    Without ``model``, the first image model of the catalog with an enabled deployment is
    used (OpenAI's SDKs let ``images.generate`` leave it out).

    Errors: InvalidRequest, ModelNotFound.
    """
    if isinstance(body, dict) and body.get("model") is None:
        default = next((m.id for m in catalog.models.values() if m.modality == "image" and m.id in enabled), None)
        if default is None:
            raise ModelNotFound("No image model is enabled on this server.")
        body = {**body, "model": default}
    model = resolve_model(body, catalog, enabled, "image")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' is required and must be a non-empty string.", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"'prompt' may be at most {MAX_PROMPT_CHARS} characters.", param="prompt")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest(f"'n' must be an integer from 1 to {MAX_IMAGES}.", param="n")
    qualities = _allowed(body, "quality", model.image_output_tokens)
    sizes = _allowed(body, "size", next(iter(model.image_output_tokens.values())))
    if body.get("response_format") not in (None, "b64_json"):
        raise InvalidRequest(
            f"'{model.id}' returns images as b64_json only; 'response_format' must be b64_json.",
            param="response_format",
        )
    if body.get("stream") is not None and body["stream"] is not False:  # 0 == False, but is not false
        raise InvalidRequest("Streaming image generation is not supported; leave 'stream' out.", param="stream")

    prompt_tokens = count_text(prompt, model.encoding)
    options = [(q, s) for q in qualities for s in sizes]
    worst_tokens = max(model.image_output_tokens[q][s] for q, s in options)
    worst_price = max(model.image_prices[q][s] for q, s in options)
    prices = model.prices
    by_tokens = image_cost(Usage(prompt_tokens=prompt_tokens, completion_tokens=n * worst_tokens), prices)
    by_price = image_cost(ImageUsage(prompt_tokens=prompt_tokens, images_cost=n * worst_price), prices)
    return ImageRequest(
        model=model,
        body=body,
        prompt_tokens=prompt_tokens,
        output_tokens=worst_tokens,
        choices=n,
        hold_amount=max(by_tokens, by_price, 1),
        qualities=qualities,
        sizes=sizes,
    )
