"""What the shared paid-call path (:mod:`engine.exchange`) needs of a checked request.

Chat completions (:class:`~engine.chat_request.ChatRequest`), embeddings
(:class:`~engine.embeddings.EmbeddingRequest`) and image generations
(:class:`~engine.images.ImageRequest`) differ only in their checks, what they hold, what they
send and what their usage costs; each implements :class:`ModelCall`, and the path that
holds, routes, calls, settles and records is written once.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import attrs

from omixa.engine.catalog import ModelInfo, Prices, cost_of
from omixa.engine.config import DeploymentConfig
from omixa.engine.upstream import CallIds, Completion, Provider, Usage


@attrs.frozen
class StoredAnswer:
    """An answer the upstream stores: its id, and the ids of its output items."""

    id: str
    item_ids: tuple[str, ...] = ()


class ModelCall(Protocol):
    """A checked request of any endpoint, as the shared path needs it (read-only: the
    requests are frozen)."""

    # The API it came through, for metrics: chat, responses, embeddings, images.
    api: ClassVar[str]

    @property
    def model(self) -> ModelInfo: ...

    @property
    def body(self) -> dict[str, Any]: ...

    @property
    def stream(self) -> bool: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int:
        """The cap per choice the hold covers."""
        ...

    @property
    def choices(self) -> int: ...

    @property
    def cap_is_clients(self) -> bool:
        """The cap may not be lowered to fit the wallet."""
        ...

    @property
    def priority(self) -> bool: ...

    @property
    def hold_amount(self) -> int | None:
        """A fixed hold, or None: the wallet prices prompt + cap."""
        ...

    @property
    def estimated_tokens(self) -> int: ...

    @property
    def hold_prices(self) -> Prices: ...

    def build_body(self, output_tokens: int) -> dict[str, Any]:
        """The upstream body for the cap the hold covers."""
        ...

    def prefers(self, deployment: DeploymentConfig) -> bool:
        """Whether the router should try ``deployment`` first."""
        ...

    def allows(self, deployment: DeploymentConfig) -> bool:
        """Whether ``deployment`` may serve the call at all."""
        ...

    def for_deployment(self, body: dict[str, Any], deployment: DeploymentConfig) -> dict[str, Any]:
        """The body as sent to that deployment."""
        ...

    async def send(self, provider: Provider, body: dict[str, Any], ids: CallIds) -> Completion:
        """The adapter call (non-streaming), as the attempt ``ids``."""
        ...

    def usage_of(self, completion: Completion) -> Usage:
        """What to charge for a finished answer."""
        ...

    def stored_answer(self, answer: dict[str, Any]) -> StoredAnswer | None:
        """Where the upstream stores a non-streaming ``answer`` (the Responses API), or None."""
        ...

    def cost(self, usage: Usage, service_tier: str | None) -> int:
        """Nano-dollars for ``usage``, answered at ``service_tier``."""
        ...


class PlainCall:
    """The :class:`ModelCall` defaults of a call with no stream, no service tier and no cap
    to lower (embeddings, images): held at the model's standard prices, with every
    deployment of the model equal and sent the same body."""

    __slots__ = ()
    model: ModelInfo
    stream = False
    cap_is_clients = True
    priority = False

    @property
    def hold_prices(self) -> Prices:
        return self.model.prices

    def prefers(self, deployment: DeploymentConfig) -> bool:
        return False

    def allows(self, deployment: DeploymentConfig) -> bool:
        return True

    def for_deployment(self, body: dict[str, Any], deployment: DeploymentConfig) -> dict[str, Any]:
        return body

    def stored_answer(self, answer: dict[str, Any]) -> StoredAnswer | None:
        return None


class TieredCall:
    """The :class:`ModelCall` parts of a call Azure may serve at its priority tier (chat
    completions, the Responses API): ``priority`` says the client asked for priority and a
    priority deployment may serve it."""

    __slots__ = ()
    model: ModelInfo
    priority: bool

    @property
    def hold_prices(self) -> Prices:
        """Priority prices when the answer may come from the priority tier."""
        if self.priority and self.model.priority_prices is not None:
            return self.model.priority_prices
        return self.model.prices

    def prefers(self, deployment: DeploymentConfig) -> bool:
        """Priority requests try the deployments with priority processing first."""
        return self.priority and deployment.priority

    def for_deployment(self, body: dict[str, Any], deployment: DeploymentConfig) -> dict[str, Any]:
        """``body`` as sent to ``deployment``: only a deployment with priority processing
        gets a ``service_tier``, and then always an explicit one ("priority" when this
        request may be billed at priority prices, else "default"), so the tier Azure bills
        is never one the hold did not cover."""
        if not deployment.priority:
            return body
        return {**body, "service_tier": "priority" if self.priority else "default"}

    def cost(self, usage: Usage, service_tier: str | None) -> int:
        """Nano-dollars for ``usage`` at the prices of the tier the answer reported, when the
        request asked for priority; at standard prices otherwise, whatever the answer's label
        (such a request was held at standard prices and sent as "default")."""
        return cost_of(usage, self.model.prices_for(service_tier if self.priority else None))
