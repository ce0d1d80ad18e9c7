"""Checking an embeddings request (``POST /api/v1/embeddings``) and pricing it.

The input is counted exactly before the call, with the model's tokenizer (a token array
counts as its length), so the hold is the exact price of the input: embeddings have no
output tokens. The charge is the upstream's ``usage.prompt_tokens`` at the catalog's input
price, never more than the hold.

Like chat, everything a client can get wrong is found here: a clear ``invalid_request``
(400) or ``model_not_found`` (404), and nothing held, sent or logged.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any, ClassVar

import attrs

from omixa.engine.catalog import Catalog, ModelInfo, cost_of
from omixa.engine.chat_request import resolve_model
from omixa.engine.errors import InternalError, InvalidRequest
from omixa.engine.model_call import PlainCall
from omixa.engine.tokens import count_text
from omixa.engine.upstream import CallIds, Completion, EmbeddingsProvider, Provider, Usage

# OpenAI's limits: inputs per request, and tokens over all inputs of one request.
MAX_INPUTS = 2048
MAX_TOTAL_TOKENS = 300_000
ENCODING_FORMATS = ("float", "base64")
# Token ids are non-negative and fit the largest vocabulary with room to spare.
MAX_TOKEN_ID = 2**31 - 1


@attrs.frozen(kw_only=True)
class EmbeddingRequest(PlainCall):
    """A checked embeddings request; ``prompt_tokens`` is the exact input count."""

    api: ClassVar[str] = "embeddings"

    model: ModelInfo
    body: dict[str, Any]
    prompt_tokens: int

    # No output and one result: the hold (prompt at the input price) is exact.
    output_tokens = 0
    choices = 1
    hold_amount = None

    @property
    def estimated_tokens(self) -> int:
        return self.prompt_tokens

    def build_body(self, output_tokens: int) -> dict[str, Any]:
        return copy.copy(self.body)

    async def send(self, provider: Provider, body: dict[str, Any], ids: CallIds) -> Completion:
        # The fleet gives a model only deployments of its provider (or the simulator), and
        # the catalog's embed models are Azure's: such an adapter has it.
        if not isinstance(provider, EmbeddingsProvider):
            raise InternalError()
        return await provider.embed(body, ids)

    def usage_of(self, completion: Completion) -> Usage:
        """The upstream's usage; without one, the input as counted here."""
        return completion.usage or Usage(prompt_tokens=self.prompt_tokens)

    def cost(self, usage: Usage, service_tier: str | None) -> int:
        return cost_of(usage, self.model.prices)


def _input_tokens(value: Any, model: ModelInfo) -> list[int]:
    """Tokens of each input. Errors: InvalidRequest naming the bad input."""
    shape = ("'input' must be a non-empty string, an array of non-empty strings, an array of "
             "token ids, or an array of non-empty arrays of token ids.")  # fmt: skip
    if isinstance(value, str):
        if not value:
            raise InvalidRequest(shape, param="input")
        return [count_text(value, model.encoding)]
    if not isinstance(value, list) or not value:
        raise InvalidRequest(shape, param="input")
    if all(_is_token(t) for t in value):
        return [len(value)]  # one input, as token ids
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUTS} inputs; got {len(value)}.", param="input")
    counts = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            counts.append(count_text(item, model.encoding))
        elif isinstance(item, list) and item and all(_is_token(t) for t in item):
            counts.append(len(item))
        else:
            raise InvalidRequest(f"input[{i}] is not valid. {shape}", param=f"input[{i}]")
    kinds = {isinstance(item, str) for item in value}
    if len(kinds) > 1:
        raise InvalidRequest("'input' must not mix strings and token arrays.", param="input")
    return counts


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


def parse_embedding_request(body: Any, catalog: Catalog, enabled: Collection[str]) -> EmbeddingRequest:
    """Check an embeddings body and count its input exactly.

    Errors: InvalidRequest, ModelNotFound.
    """
    model = resolve_model(body, catalog, enabled, "embedding")
    if "input" not in body:
        raise InvalidRequest("'input' is required.", param="input")
    counts = _input_tokens(body["input"], model)
    for i, tokens in enumerate(counts):
        if tokens > model.context_window:
            param = "input" if len(counts) == 1 else f"input[{i}]"
            where = "'input'" if len(counts) == 1 else param
            message = f"{where} is {tokens} tokens; '{model.id}' accepts at most {model.context_window}."
            raise InvalidRequest(message, param=param)
    total = sum(counts)
    if total > MAX_TOTAL_TOKENS:
        raise InvalidRequest(f"The inputs are {total} tokens; at most {MAX_TOTAL_TOKENS} per request.", param="input")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not model.custom_dimensions:
            raise InvalidRequest(f"'{model.id}' does not take 'dimensions'.", param="dimensions")
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= model.dimensions:
            raise InvalidRequest(f"'dimensions' must be an integer from 1 to {model.dimensions}.", param="dimensions")
    encoding_format = body.get("encoding_format")
    if encoding_format is not None and encoding_format not in ENCODING_FORMATS:
        raise InvalidRequest(
            f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}.", param="encoding_format"
        )
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise InvalidRequest("'user' must be a string.", param="user")
    return EmbeddingRequest(model=model, body=body, prompt_tokens=total)
