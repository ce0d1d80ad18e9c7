"""The router: picks a deployment of the requested catalog model and obtains a slot on it.

Candidates are the model's deployments whose snapshot says healthy, ordered by load relative
to weight (in flight / weight) with a random tie-break so equal deployments share traffic
instead of herding. The chosen actor is asked for a slot; on refusal the next one is tried.
Routing is by the catalog model id, never by the Azure deployment name.

Failover after an upstream error, windows and health are the routing issue's; the
:class:`Lease` already reports what they need.
"""

from __future__ import annotations

import random
from typing import Iterable, Mapping

import attrs

from engine.deployment import DeploymentActor, Refused, Slot
from engine.errors import NoHealthyDeployment
from engine.providers.base import Usage


@attrs.frozen(kw_only=True)
class Lease:
    """A granted slot on one deployment; :meth:`finish` exactly once."""

    actor: DeploymentActor
    slot: Slot

    async def finish(self, usage: Usage | None, outcome: str, latency_s: float) -> None:
        await self.actor.finish(self.slot, usage, outcome, latency_s)


class Router:
    def __init__(self, actors: Iterable[DeploymentActor], *, rng: random.Random | None = None) -> None:
        by_model: dict[str, list[DeploymentActor]] = {}
        for actor in actors:
            by_model.setdefault(actor.config.model, []).append(actor)
        self._by_model: Mapping[str, list[DeploymentActor]] = by_model
        self._rng = rng or random.Random()

    def models(self) -> set[str]:
        """Catalog ids that have at least one enabled deployment."""
        return {m for m, actors in self._by_model.items() if any(a.config.enabled for a in actors)}

    def _candidates(self, model: str) -> list[DeploymentActor]:
        ranked = []
        for actor in self._by_model.get(model, ()):
            snap = actor.snapshot
            if not (snap.healthy and actor.config.enabled):
                continue
            ranked.append((snap.in_flight / snap.weight, self._rng.random(), actor))
        ranked.sort(key=lambda item: item[:2])
        return [actor for _, _, actor in ranked]

    async def acquire(self, model: str, request_id: str, estimated_tokens: int) -> Lease:
        """A slot on the best deployment of ``model`` that grants one.

        Errors: NoHealthyDeployment (with ``retry_after``) when none does.
        """
        retry_after: float | None = None
        for actor in self._candidates(model):
            answer = await actor.acquire(request_id, estimated_tokens)
            if isinstance(answer, Refused):
                if answer.retry_after is not None:
                    retry_after = min(retry_after or answer.retry_after, answer.retry_after)
                continue
            return Lease(actor=actor, slot=answer)
        raise NoHealthyDeployment(retry_after=retry_after or 1.0)
