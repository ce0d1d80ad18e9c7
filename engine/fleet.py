"""The fleet: the set of deployment actors, changed at runtime without dropping requests.

:meth:`Fleet.apply` takes a new list of ``[[deployments]]`` and compares it with the running
one by ``name``:
- a new name starts a new actor (supervised, in the engine's nursery), which starts
  receiving traffic at once;
- a removed name leaves routing at once and its actor's mailbox is closed: requests and
  streams already running on it finish normally (their slots are returned to a closed
  mailbox, which is harmless), and the actor returns when its queue is drained;
- a changed entry is re-tuned in place: the actor keeps its window counts and health, and
  takes the new limits, weight and enablement; a changed endpoint, deployment, key or API
  version gives it a new adapter for the requests that follow.

Upstream HTTP clients are shared per endpoint and closed only at shutdown, so a request in
flight never loses its connection pool.
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from omixa.engine.catalog import Catalog
from omixa.engine.cluster import WHOLE, ClusterLink, Share
from omixa.engine.config import BreakerConfig, DeploymentConfig, UpstreamConfig
from omixa.engine.deployment import DeploymentActor
from omixa.engine.providers import DEFAULT_READ_SIZE, HttpClients, build_provider, check_deployment
from omixa.engine.router import Router
from omixa.engine.supervise import Supervision, supervised

log = logging.getLogger("omixa.fleet")

# Fields whose change needs a new adapter (the rest are the actor's own tuning).
_ADAPTER_FIELDS = (
    "provider", "endpoint", "deployment", "api_key", "api_version",
    "project", "location", "service_account_file",
)  # fmt: skip


@attrs.frozen(kw_only=True)
class FleetChange:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    retuned: tuple[str, ...] = ()


class Fleet:
    def __init__(
        self,
        *,
        catalog: Catalog,
        upstream: UpstreamConfig,
        breaker: BreakerConfig,
        router: Router,
        read_size: int = DEFAULT_READ_SIZE,
        cluster: ClusterLink | None = None,
        share: Share = WHOLE,
        supervision: Supervision | None = None,
    ) -> None:
        """``read_size``: ``streaming.chunk_bytes``, the bound on each socket read of a
        streamed answer's body, for every upstream client the fleet makes. ``cluster``: the
        deployments' windows and health are shared through it (:mod:`engine.cluster`);
        ``share``: else, the part of each limit this process admits (one of several workers)."""
        self._supervision = supervision
        self._catalog = catalog
        self._upstream = upstream
        self._breaker = breaker
        self._router = router
        self._cluster = cluster
        self._share = share
        self.clients = HttpClients(upstream, read_size)
        self._actors: dict[str, DeploymentActor] = {}
        self._nursery: trio.Nursery | None = None
        self._closed = trio.Event()

    @property
    def actors(self) -> list[DeploymentActor]:
        return list(self._actors.values())

    def check(self, deployments: tuple[DeploymentConfig, ...]) -> tuple[DeploymentConfig, ...]:
        """The deployments as their adapters will use them (:func:`engine.providers.check_deployment`).

        Errors: ValueError if a deployment names a model the catalog lacks or one of another
        provider (a simulator may stand in for any), enables priority for a model without
        priority prices, or has credentials its adapter cannot use (a Vertex service account
        file). It reads those files: call it from a worker thread on a running loop.
        """
        checked = []
        for dep in deployments:
            model = self._catalog.get(dep.model)
            if model is None:
                raise ValueError(f"deployment {dep.name!r}: model {dep.model!r} is not in the catalog")
            if dep.priority and model.priority_prices is None:
                raise ValueError(
                    f"deployment {dep.name!r}: priority is set, but model {dep.model!r} has no "
                    "priority_prices in the catalog"
                )
            if dep.provider not in ("simulator", model.provider):
                raise ValueError(
                    f"deployment {dep.name!r}: model {dep.model!r} is a {model.provider} model, not {dep.provider}"
                )
            try:
                checked.append(check_deployment(dep))
            except ValueError as exc:
                raise ValueError(f"deployment {dep.name!r}: {exc}") from None
        return tuple(checked)

    async def run(
        self,
        deployments: tuple[DeploymentConfig, ...],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Host the actors until :meth:`close`; ready once the first set is running."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.apply(deployments)
            task_status.started()
            # The nursery stays open for actors started later; close() lets it drain.
            await self._closed.wait()
        self._nursery = None

    def close(self) -> None:
        """Close every mailbox: actors serve what is queued, then return."""
        for actor in self._actors.values():
            actor.close()
        self._closed.set()

    async def apply(self, deployments: tuple[DeploymentConfig, ...]) -> FleetChange:
        """Make the running set match ``deployments`` (see the module docstring).

        Errors: ValueError (unknown model); nothing is changed then.
        """
        assert self._nursery is not None, "the fleet is not running"
        deployments = await trio.to_thread.run_sync(self.check, deployments)
        wanted = {dep.name: dep for dep in deployments}
        added, removed, retuned = [], [], []
        for name in [n for n in self._actors if n not in wanted]:
            self._actors.pop(name).close()
            removed.append(name)
        for name, dep in wanted.items():
            actor = self._actors.get(name)
            if actor is None:
                actor = DeploymentActor(
                    dep,
                    build_provider(dep, self._upstream, self.clients),
                    self._breaker,
                    cluster=self._cluster,
                    share=self._share,
                )
                await self._nursery.start(
                    partial(supervised, f"deployment-{name}", actor.run, supervision=self._supervision),
                    name=f"deployment-{name}",
                )
                self._actors[name] = actor
                added.append(name)
            elif actor.config != dep:
                provider = None
                if any(getattr(actor.config, f) != getattr(dep, f) for f in _ADAPTER_FIELDS):
                    provider = build_provider(dep, self._upstream, self.clients)
                await actor.retune(dep, provider)
                retuned.append(name)
        self._router.replace(self._actors.values())
        change = FleetChange(added=tuple(added), removed=tuple(removed), retuned=tuple(retuned))
        if added or removed or retuned:
            log.info("deployments: added %s, removed %s, re-tuned %s", added, removed, retuned)
        return change
