"""Sampling the state the actors own into the metrics (see :mod:`engine.metrics`).

The request path counts its own events; what the actors own is read here instead, from what
they publish, so no actor does any work for the metrics: each deployment's snapshot (windows,
in flight, health, and its cooldown and breaker counts), the mailboxes' depths, the usage
aggregator's queue, overflow and counts, the wallet pool's actors and expired holds, the
database pool, Redis's fallbacks, and, from the database, the pending holds (one read of
the pending holds through their index). :meth:`MetricsSampler.sample` runs every
``[metrics] sample_seconds`` and before each scrape served by this process. Monotonic counts
that the actors keep become counter increments (a count that went down, an actor restarted,
counts again from zero).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

import trio

from omixa.engine.cluster import ClusterLink
from omixa.engine.deployment import DeploymentActor
from omixa.engine.metrics import HEALTH_STATES, Metrics, forget
from omixa.engine.usage import UsageAggregator
from omixa.engine.wallet import WalletPool
from omixa.storage import Storage, StorageError

log = logging.getLogger("omixa.metrics")

# Bound on the database's answer to the pending-holds read.
SAMPLE_TIMEOUT = 2.0


class MetricsSampler:
    def __init__(
        self,
        metrics: Metrics,
        *,
        deployments: Callable[[], list[DeploymentActor]],
        wallets: WalletPool,
        usage: UsageAggregator,
        storage: Storage,
        readiness: Callable[[], Awaitable[list[str]]],
        cluster: ClusterLink | None,
        interval: float,
    ) -> None:
        self._metrics = metrics
        self._deployments = deployments
        self._wallets = wallets
        self._usage = usage
        self._storage = storage
        self._readiness = readiness
        self._cluster = cluster
        self._interval = interval
        self._counts: dict[tuple[str, ...], int] = {}
        self._deployment_labels: set[tuple[str, ...]] = set()
        self._window_labels: set[tuple[str, ...]] = set()
        self._models: set[tuple[str, ...]] = set()
        self._lock = trio.Lock()  # one sample at a time (the timer's and a scrape's)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.sample()
            await trio.sleep(self._interval)

    async def sample(self) -> None:
        """Read everything once (the database's part bounded by :data:`SAMPLE_TIMEOUT`)."""
        async with self._lock:
            self._sample_actors(trio.current_time())
            await self._sample_database()
            self._metrics.ready.set(0 if await self._readiness() else 1)

    def _advance(self, key: tuple[str, ...], value: int, inc: Callable[[float], None]) -> None:
        """Count what a monotonic ``value`` grew by since the last sample."""
        last = self._counts.get(key, 0)
        grown = value - last if value >= last else value
        self._counts[key] = value
        if grown:
            inc(grown)

    def _sample_actors(self, now: float) -> None:
        m = self._metrics
        deployment_labels: set[tuple[str, ...]] = set()
        window_labels: set[tuple[str, ...]] = set()
        healthy: dict[str, int] = {}
        enabled: dict[str, int] = {}
        for actor in self._deployments():
            snap = actor.snapshot
            labels = (snap.name, snap.model)
            deployment_labels.add(labels)
            m.in_flight.labels(*labels).set(snap.in_flight)
            m.deployment_mailbox.labels(*labels).set(actor.mailbox_depth)
            for state in HEALTH_STATES:
                m.health.labels(*labels, state).set(1 if snap.health == state else 0)
            for window, view in snap.windows.items():
                window_labels.add((*labels, window))
                m.window_used.labels(*labels, window).set(view.used)
                m.window_limit.labels(*labels, window).set(view.limit)
            up = snap.enabled and snap.health != "open" and snap.available_at <= now
            healthy[snap.model] = healthy.get(snap.model, 0) + up
            enabled[snap.model] = enabled.get(snap.model, 0) + snap.enabled
            self._advance(("cooldowns", *labels), snap.cooldowns, m.cooldowns.labels(*labels).inc)
            self._advance(("breaker_opens", *labels), snap.breaker_opens, m.breaker_opens.labels(*labels).inc)
        for model, count in healthy.items():
            m.healthy.labels(model).set(count)
            m.enabled.labels(model).set(enabled[model])
        self._forget(deployment_labels, window_labels, {(model,) for model in healthy})

        actors, deepest = self._wallets.mailbox_depths()
        m.wallet_actors.set(actors)
        m.wallet_mailbox.set(deepest)
        self._advance(("holds_expired",), self._wallets.expired_holds, m.holds_expired.inc)
        queued, overflow = self._usage.depths
        m.usage_queue.set(queued)
        m.usage_overflow.set(overflow)
        self._advance(("usage_written",), self._usage.written, m.usage_written.inc)
        self._advance(("usage_dropped",), self._usage.dropped, m.usage_dropped.inc)
        pool = self._storage.pool_stats()
        m.db_connections.labels("in_use").set(pool.in_use)
        m.db_connections.labels("idle").set(pool.idle)
        m.db_connections.labels("max").set(pool.max_size)
        m.db_waiting.set(pool.waiting)
        self._advance(("db_waits",), pool.waits, m.db_waits.inc)
        if self._cluster is not None:
            for part, times in self._cluster.fallbacks.items():
                self._advance(("redis_fallbacks", part), times, m.redis_fallbacks.labels(part).inc)

    def _forget(
        self, deployments: set[tuple[str, ...]], windows: set[tuple[str, ...]], models: set[tuple[str, ...]]
    ) -> None:
        """Zero and drop the gauges of deployments (and models) a reload removed."""
        m = self._metrics
        for labels in self._deployment_labels - deployments:
            forget(m.in_flight, *labels)
            forget(m.deployment_mailbox, *labels)
            for state in HEALTH_STATES:
                forget(m.health, *labels, state)
        for labels in self._window_labels - windows:
            forget(m.window_used, *labels)
            forget(m.window_limit, *labels)
        for labels in self._models - models:
            forget(m.healthy, *labels)
            forget(m.enabled, *labels)
        self._deployment_labels, self._window_labels, self._models = deployments, windows, models

    async def _sample_database(self) -> None:
        m = self._metrics
        with trio.move_on_after(SAMPLE_TIMEOUT):
            try:
                holds = await self._storage.hold_summary()
            except StorageError as exc:
                log.debug("metrics: pending holds not read: %s", exc)
                return
            m.holds_pending.set(holds.pending)
            m.money_locked.set(holds.locked)
            oldest = holds.oldest_created_at
            age = (dt.datetime.now(dt.UTC) - oldest).total_seconds() if oldest is not None else 0.0
            m.hold_oldest_age.set(max(age, 0.0))
