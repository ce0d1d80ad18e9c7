"""The router: picks a deployment of the requested catalog model and obtains a slot on it.

Candidates are the model's enabled deployments whose published snapshot says they can take
a request now (healthy or due a half-open probe, and with room in every window). They are
ordered by a weighted random draw (Efraimidis-Spirakis: key = u ** (1 / w)), where a
deployment's w grows with its configured ``weight`` and its remaining window room and
shrinks with its requests in flight (in every process, with shared limits): heavier,
emptier deployments are preferred without every request herding onto the same one. The
chosen actor is asked for a slot (it has the final word); on refusal the next is tried.

Routing is by the catalog model id, never by the Azure deployment name. When no deployment
can take the request, :class:`NoHealthyDeployment` carries ``retry_after``: the soonest
moment any of them leaves cooldown or has room.

Failover after an upstream error is the caller's loop (:mod:`engine.exchange`), which asks again
with the failed deployments excluded.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Mapping

import attrs
import trio

from omixa.engine.config import DeploymentConfig
from omixa.engine.deployment import DeploymentActor
from omixa.engine.deployment_types import DeploymentSnapshot, Refused, Slot
from omixa.engine.errors import NoHealthyDeployment, OmixaError
from omixa.engine.upstream import Usage

# Floor of the room factor, so a nearly full deployment is still tried, just later.
_MIN_ROOM = 0.05


@attrs.frozen(kw_only=True)
class Lease:
    """A granted slot on one deployment; :meth:`finish` exactly once."""

    actor: DeploymentActor
    slot: Slot

    async def finish(
        self, usage: Usage | None, outcome: str, latency_s: float, failure: OmixaError | None = None
    ) -> None:
        await self.actor.finish(self.slot, usage, outcome, latency_s, failure)


class Router:
    def __init__(self, actors: Iterable[DeploymentActor] = (), *, rng: random.Random | None = None) -> None:
        self._by_model: Mapping[str, list[DeploymentActor]] = {}
        self._rng = rng or random.Random()
        self.replace(actors)

    def replace(self, actors: Iterable[DeploymentActor]) -> None:
        """Route over ``actors`` from now on (requests already routed are unaffected)."""
        by_model: dict[str, list[DeploymentActor]] = {}
        for actor in actors:
            by_model.setdefault(actor.config.model, []).append(actor)
        self._by_model = by_model

    def models(self) -> set[str]:
        """Catalog ids that have at least one enabled deployment."""
        return {m for m, actors in self._by_model.items() if any(a.config.enabled for a in actors)}

    def models_served_by(self, providers: Collection[str]) -> set[str]:
        """Catalog ids that have an enabled deployment whose adapter is one of ``providers``."""
        return {
            m for m, actors in self._by_model.items()
            if any(a.config.enabled and a.config.provider in providers for a in actors)
        }  # fmt: skip

    def priority_models(self) -> set[str]:
        """Catalog ids that have an enabled deployment with priority processing."""
        return {
            m for m, actors in self._by_model.items()
            if any(a.config.enabled and a.config.priority for a in actors)
        }  # fmt: skip

    def snapshots(self, model: str) -> list[DeploymentSnapshot]:
        """The published state of the model's enabled deployments."""
        return [actor.snapshot for actor in self._by_model.get(model, ()) if actor.config.enabled]

    def deployments(self) -> list[DeploymentActor]:
        return [actor for actors in self._by_model.values() for actor in actors]

    def _ranked(
        self,
        model: str,
        exclude: Collection[str],
        now: float,
        prefer: Callable[[DeploymentConfig], bool] | None = None,
        allow: Callable[[DeploymentConfig], bool] | None = None,
    ) -> tuple[list[DeploymentActor], float | None]:
        """Candidates in the order to ask them (preferred ones first), and the soonest time
        a skipped one is back."""
        ranked: list[tuple[bool, float, DeploymentActor]] = []
        soonest: float | None = None
        for actor in self._by_model.get(model, ()):
            snap = actor.snapshot
            if not actor.config.enabled or actor.config.name in exclude:
                continue
            if allow is not None and not allow(actor.config):
                continue
            if snap.available_at > now:
                soonest = snap.available_at if soonest is None else min(soonest, snap.available_at)
                continue
            weight = snap.weight * max(snap.room, _MIN_ROOM) / (1 + snap.fleet_in_flight)
            preferred = prefer is not None and prefer(actor.config)
            ranked.append((preferred, self._rng.random() ** (1.0 / weight), actor))
        ranked.sort(key=lambda item: item[:2], reverse=True)
        return [actor for _, _, actor in ranked], soonest

    async def acquire(
        self,
        model: str,
        request_id: str,
        estimated_tokens: int,
        *,
        exclude: Collection[str] = (),
        prefer: Callable[[DeploymentConfig], bool] | None = None,
        allow: Callable[[DeploymentConfig], bool] | None = None,
    ) -> Lease:
        """A slot on the best deployment of ``model`` that grants one; deployments for which
        ``prefer`` is true are asked before the others, and only those ``allow`` accepts
        (all when None) are asked at all.

        Errors: NoHealthyDeployment (with ``retry_after``) when none does.
        """
        now = trio.current_time()
        candidates, soonest = self._ranked(model, exclude, now, prefer, allow)
        waits = [soonest - now] if soonest is not None else []
        for actor in candidates:
            answer = await actor.acquire(request_id, estimated_tokens)
            if isinstance(answer, Refused):
                if answer.retry_after is not None:
                    waits.append(answer.retry_after)
                continue
            return Lease(actor=actor, slot=answer)
        raise NoHealthyDeployment(retry_after=max(min(waits), 1.0) if waits else None)
