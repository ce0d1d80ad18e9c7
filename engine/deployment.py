"""The deployment actor: one per configured upstream deployment.

It owns the deployment's state: requests in flight, its RPM, TPM and hourly-token windows,
and its health (cooldown after a 429, circuit breaker after consecutive failures). It
grants or refuses a slot for an estimated token count (:class:`Acquire`) and takes the real
usage and the outcome back afterwards (:class:`Finish`). It never makes the HTTP call: the
request's own task does, so a slow upstream never blocks the actor.

Admission counts one request in ``rpm`` and the estimated tokens (prompt + output cap, as
Azure does) in ``tpm`` and ``hourly_tokens``; :class:`Finish` corrects the token windows with
the real usage. A refusal says when the deployment will have room (``retry_after``).

Outcomes and health: an upstream 429 cools the deployment down for the upstream's delay
(else ``breaker.cooldown_seconds``); ``breaker.failures`` 5xx / timeouts / connection errors
in a row open the breaker for ``breaker.cooldown_seconds``, after which one probe request is
let through, and its outcome closes or re-opens the breaker. Client errors (4xx), requests
the client abandoned and a full connection pool of our own (UpstreamBusy) say nothing about
health.

Shared across processes (``[cluster] redis_url``, :mod:`engine.cluster`): the windows and
health live in Redis. The actor queues the admissions that arrive and a task of its own
sends them, with the corrections and health events gathered meanwhile, in one call per
batch; the answers come back in order. The actor's mailbox never waits on Redis. Locally it
still counts consecutive failures (a breaker it opens, or a 429 it meets, is sent as an
event that every process honours from its next admission on). After the breaker's cooldown
one probe is let through by the whole fleet. When Redis does not answer, the actor decides
alone on its process's share of each limit (see :mod:`engine.cluster`).

Mailbox: bounded (:data:`MAILBOX_SIZE`); a full mailbox makes the sender wait.
"""

from __future__ import annotations

import itertools
import logging
import math

import trio

from omixa.engine.cluster import WHOLE, AdmissionBook, ClusterLink, Share, SharedSide
from omixa.engine.config import BreakerConfig, DeploymentConfig
from omixa.engine.deployment_types import Acquire, DeploymentSnapshot, Finish, Refused, Retune, Slot, WindowView
from omixa.engine.errors import OmixaError, UpstreamBusy, UpstreamError, UpstreamTimeout
from omixa.engine.mailbox import Reply, ask
from omixa.engine.upstream import Provider, Usage
from omixa.engine.windows import DEPLOYMENT_WINDOWS, Health, SlidingWindow, hour_window, minute_window
from omixa.storage.coordination import CoordinatorError, DeploymentBatch, DeploymentState

log = logging.getLogger("omixa.deployment")

MAILBOX_SIZE = 256
# Bound on waiting for room in a full mailbox to return a slot.
FINISH_TIMEOUT = 5.0
# Weight of a new latency sample in the moving average.
LATENCY_ALPHA = 0.2


class DeploymentActor:
    """Owns one deployment's state. Start with ``nursery.start(actor.run)``."""

    def __init__(
        self,
        config: DeploymentConfig,
        provider: Provider,
        breaker: BreakerConfig | None = None,
        *,
        cluster: ClusterLink | None = None,
        share: Share = WHOLE,
    ) -> None:
        """``share``: the part of each limit this process admits on its own (one of several
        workers without Redis); with ``cluster``, the limits are shared instead."""
        breaker = breaker or BreakerConfig()
        self.config = config
        self.provider = provider
        self._breaker = breaker
        self._windows: dict[str, SlidingWindow] = {}
        self._share = share  # the windows above hold this share of each limit
        self._tune_windows(config)
        self._health = Health(failures_to_open=breaker.failures, cooldown_seconds=breaker.cooldown_seconds)
        # Shared mode (engine.cluster): what waits for the next call to Redis, and its last answer.
        self._cluster = cluster
        self._pending: list[Acquire] = []
        self._events: list[tuple[str, int]] = []
        self._fixes: list[tuple[str, int, int]] = []  # window, admitted at (Redis ms), delta
        self._side = SharedSide(cluster, config.name, lambda window: DEPLOYMENT_WINDOWS[window])
        self._state: DeploymentState | None = None
        self._others_in_flight = 0  # the other processes' requests in flight, as last read
        self._wake = trio.Event()
        self._closing = False
        self._send, self._receive = trio.open_memory_channel[Acquire | Finish | Retune](MAILBOX_SIZE)
        self._ids = itertools.count(1)
        self._open: dict[int, Slot] = {}
        self._counters = {"requests": 0, "failures": 0, "tokens_used": 0, "cooldowns": 0, "breaker_opens": 0}
        self._last: tuple[str | None, str | None] = (None, None)
        self._latency: float | None = None
        self.snapshot = DeploymentSnapshot(
            name=config.name,
            model=config.model,
            region=config.region,
            weight=config.weight,
            enabled=config.enabled,
        )
        self._publish(trio.current_time())

    # -- the requester's side -------------------------------------------------------------
    async def acquire(self, request_id: str, estimated_tokens: int) -> Slot | Refused:
        """Ask for a slot.

        Cancellation: a slot granted to a requester that was cancelled meanwhile is given
        back by the actor itself.
        """
        reply: Reply[Slot | Refused] = Reply()
        message = Acquire(request_id=request_id, estimated_tokens=estimated_tokens, reply=reply)
        try:
            return await ask(self._send, message, reply)
        except trio.Cancelled:
            granted = reply.unclaimed
            if isinstance(granted, Slot):
                await self.finish(granted, None, "cancelled", 0.0)
            raise

    async def finish(
        self,
        slot: Slot,
        usage: Usage | None,
        outcome: str,
        latency_s: float,
        failure: OmixaError | None = None,
    ) -> None:
        """Give the slot back with what happened. Never raises on a closed mailbox.

        Cancellation: the slot is returned even if the caller is being cancelled (a full
        mailbox is waited on in a shielded, bounded step), so no slot is ever lost.
        """
        message = Finish(slot=slot, usage=usage, outcome=outcome, latency_s=latency_s, failure=failure)
        try:
            self._send.send_nowait(message)
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        with trio.move_on_after(FINISH_TIMEOUT, shield=True):
            try:
                await self._send.send(message)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        log.error("deployment %s: mailbox full; slot %s not returned", self.config.name, slot.id)

    async def retune(self, config: DeploymentConfig, provider: Provider | None = None) -> None:
        """Take new settings, keeping window counts and health (see :mod:`engine.fleet`)."""
        reply: Reply[None] = Reply()
        await ask(self._send, Retune(config=config, provider=provider, reply=reply), reply)

    @property
    def mailbox_depth(self) -> int:
        """Messages waiting in the mailbox now."""
        return self._send.statistics().current_buffer_used

    def close(self) -> None:
        """Close the mailbox: the actor finishes what is queued and returns."""
        self._send.close()

    @staticmethod
    def _limits(config: DeploymentConfig) -> dict[str, int]:
        limits = {"rpm": config.rpm, "tpm": config.tpm, "hourly_tokens": config.hourly_tokens}
        return {name: limit for name, limit in limits.items() if limit}

    def _tune_windows(self, config: DeploymentConfig) -> None:
        limits = self._limits(config)
        for name in [n for n in self._windows if n not in limits]:
            del self._windows[name]
        for name, limit in limits.items():
            share = self._share.of(limit)
            if name in self._windows:
                self._windows[name].limit = share  # the counts stay; only the limit moves
            else:
                self._windows[name] = hour_window(share) if name == "hourly_tokens" else minute_window(share)

    # -- the actor ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._cluster is None:
            task_status.started()
            await self._serve()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sync, self._cluster)
            task_status.started()
            await self._serve()
            # The mailbox is closed: send what is left (corrections, events), then stop.
            self._closing = True
            self._wake.set()
            nursery.cancel_scope.deadline = trio.current_time() + 2 * self._cluster.config.timeout_seconds + 1

    async def _serve(self) -> None:
        async for message in self._receive:
            now = trio.current_time()
            if isinstance(message, Acquire):
                self._on_acquire(message, now)
            elif isinstance(message, Finish):
                self._on_finish(message, now)
            else:
                self.config = message.config
                if message.provider is not None:
                    self.provider = message.provider
                self._tune_windows(message.config)
                message.reply.send(None)
            self._publish(now)

    def _refusal(self, estimated: int, now: float) -> Refused | None:
        if not self.config.enabled:
            return Refused(reason="disabled")
        health = self._health
        if not health.admits(now):
            reason = "probing" if health.state == "half_open" else health.state
            wait = health.retry_at(now) - now
            return Refused(reason=reason, retry_after=wait if wait > 0 else self.config_retry())
        for name, window in self._windows.items():
            amount = 1 if name == "rpm" else estimated
            if not window.fits(now, amount):
                at = window.room_at(now, amount)
                reason = "too_large" if at is None else name
                return Refused(reason=reason, retry_after=None if at is None else max(at - now, 0.001))
        return None

    def config_retry(self) -> float:
        # A half-open breaker with its probe in flight: try again shortly.
        return 1.0

    def _on_acquire(self, message: Acquire, now: float) -> None:
        if self._cluster is not None and not self._side.alone and self.config.enabled:
            self._pending.append(message)  # decided by the next call to Redis
            self._wake.set()
            return
        refusal = self._refusal(message.estimated_tokens, now)
        if refusal is not None:
            message.reply.send(refusal)
            return
        for name, window in self._windows.items():
            amount = 1 if name == "rpm" else message.estimated_tokens
            window.add(now, amount)
            if self._side.alone:
                self._side.admitted_alone(name, now, amount)
        self._health.on_admit()
        self._grant(message, now)

    def _grant(self, message: Acquire, now: float, shared_at: int | None = None, probe: bool = False) -> None:
        slot = Slot(
            id=next(self._ids),
            deployment=self.config.name,
            estimated_tokens=message.estimated_tokens,
            admitted_at=now,
            shared_at=shared_at,
            probe=probe,
        )
        self._open[slot.id] = slot
        if not message.reply.send(slot):
            self._on_finish(Finish(slot=slot, usage=None, outcome="cancelled", latency_s=0.0), now)

    # -- shared mode: the task that talks to Redis ----------------------------------------
    async def _sync(self, cluster: ClusterLink) -> None:
        """Send what waits (admissions, corrections, health events) in one call, whenever
        there is something and the previous call is back; read the shared state every
        ``refresh_seconds`` anyway (every ``retry_seconds`` while Redis is not answering).
        Corrections alone do not make a call: they wait for the next one."""
        config = cluster.config
        first = True
        while True:
            if not (first or self._pending or self._events or self._closing):
                with trio.move_on_after(config.retry_seconds if self._side.alone else config.refresh_seconds):
                    await self._wake.wait()
            first = False
            self._wake = trio.Event()
            if self._closing and not (self._pending or self._events or self._fixes):
                return
            if self._side.alone and cluster.live_processes() != self._share.count:
                self._reshare(cluster.live_processes())
            admissions, self._pending = self._pending, []
            gap = self._side.gap.take()
            batch = self._batch(cluster, admissions, gap)
            sent = trio.current_time()
            try:
                state = await cluster.coordinator.deployment(self.config.name, batch)
            except CoordinatorError as exc:
                now = trio.current_time()
                self._go_alone(cluster, str(exc), now)
                self._side.gap.merge(gap)  # not delivered: keep for later
                for message in admissions:
                    self._on_acquire(message, now)
                self._publish(now)
                if self._closing:
                    return
                continue
            restored = bool(batch.restore)
            if self._side.answered(
                redis_now_ms=state.now_ms, epoch=state.epoch, fresh=state.fresh, restored=restored, sent=sent
            ):
                self._wake.set()
            now = trio.current_time()
            granted = sum(1 for answer in state.answers if not isinstance(answer, tuple))
            self._others_in_flight = max(0, state.fleet_in_flight - batch.in_flight - granted)
            self._state = state
            for message, answer in zip(admissions, state.answers, strict=True):
                if isinstance(answer, tuple):
                    reason, retry_ms = answer
                    if retry_ms is None:
                        message.reply.send(Refused(reason="too_large"))
                    else:
                        message.reply.send(Refused(reason=reason, retry_after=retry_ms / 1000))
                else:
                    for name in self._limits(self.config):
                        self._side.mine.add(name, state.now_ms, 1 if name == "rpm" else message.estimated_tokens)
                    self._grant(message, now, shared_at=state.now_ms, probe=answer == 1)
            self._publish(now)

    def _batch(self, cluster: ClusterLink, admissions: list[Acquire], gap: AdmissionBook) -> DeploymentBatch:
        limits = self._limits(self.config)
        names = list(limits)
        windows = tuple(
            (
                name,
                limit,
                int(DEPLOYMENT_WINDOWS[name][0] * 1000),
                int(DEPLOYMENT_WINDOWS[name][1] * 1000),
                name == "rpm",
            )
            for name, limit in limits.items()
        )
        adds, restore = self._side.replays(gap, names, self._side.redis_ms(trio.current_time()))
        batch = DeploymentBatch(
            windows=windows,
            health=tuple(self._events),
            fixes=tuple((names.index(name), at, delta) for name, at, delta in self._fixes if name in limits),
            adds=adds,
            restore=restore,
            admissions=tuple(m.estimated_tokens for m in admissions),
            probe_lease_ms=int(self._breaker.cooldown_seconds * 1000),
            epoch=self._side.epoch,
            instance=cluster.instance_id,
            in_flight=len(self._open),
            # Every actor calls at least every refresh_seconds: three missed, it is gone.
            stale_ms=int(max(3 * cluster.config.refresh_seconds, 3.0) * 1000),
        )
        self._events, self._fixes = [], []
        return batch

    def _go_alone(self, cluster: ClusterLink, reason: str, now: float) -> None:
        """Decide locally on this process's share, starting from what the shared windows held
        (counted as if added at the latest moment they were, so it leaves no earlier than
        it really does) and from the shared health."""
        self._events, self._fixes = [], []
        if not self._side.go_alone(reason):
            return
        self._windows = {}
        self._reshare(cluster.live_processes())
        state = self._state
        if state is None:
            return
        for name, (used, clear_ms) in state.windows.items():
            window = self._windows.get(name)
            if window is not None and used > 0:
                window.add(min(self._side.local_time(clear_ms) - window.span, now), used)
        if state.health in ("cooling", "open"):
            until = self._side.local_time(state.health_until_ms)
            if until > now:
                self._health.state, self._health.until = state.health, until

    def _reshare(self, live: int) -> None:
        self._share = Share.unranked(live)
        self._tune_windows(self.config)

    def _on_finish(self, message: Finish, now: float) -> None:
        slot = self._open.pop(message.slot.id, None)
        if slot is None:
            return  # already finished: a repeated Finish changes nothing
        counters = self._counters
        if message.usage is not None:
            used = message.usage.prompt_tokens + message.usage.completion_tokens
            counters["tokens_used"] += used
            delta = used - slot.estimated_tokens
            if slot.shared_at is None:
                for name, window in self._windows.items():
                    if name != "rpm":
                        window.adjust(slot.admitted_at, delta)
            elif delta and not self._side.alone:
                # Sent with the next admissions, or within refresh_seconds (a call of its own
                # per request would double Redis's work at low concurrency). Admitted through
                # Redis but finished while it is away: the estimate stays.
                for name in self._limits(self.config):
                    if name != "rpm":
                        self._fixes.append((name, slot.shared_at, delta))
                        self._side.mine.correct(name, slot.shared_at, delta)
        if message.outcome != "cancelled":
            counters["requests"] += 1
        self._judge(message, now)
        self._last = (message.outcome, self._last[1])

    def _judge(self, message: Finish, now: float) -> None:
        """Update health from what the upstream did (and tell the other processes)."""
        failure, health = message.failure, self._health
        probe, before = message.slot.probe, health.state
        if isinstance(failure, UpstreamBusy):
            health.on_released()  # our own pool was full: the upstream was never asked
            if probe:
                self._tell("release")
        elif isinstance(failure, UpstreamError) and failure.upstream_status == 429:
            self._counters["failures"] += 1
            self._counters["cooldowns"] += 1
            health.on_rate_limited(now, failure.retry_after)
            wait = failure.retry_after if failure.retry_after is not None else health.cooldown_seconds
            self._tell("cool", wait)
        elif isinstance(failure, UpstreamTimeout) or (
            isinstance(failure, UpstreamError) and (failure.upstream_status is None or failure.upstream_status >= 500)
        ):
            self._counters["failures"] += 1
            health.on_failure(now)
            if probe or health.consecutive_failures >= health.failures_to_open:
                self._tell("open", health.cooldown_seconds)
        elif failure is not None or message.outcome == "ok":
            health.on_success()  # the upstream answered (a 4xx is the request's fault)
            shared = self._state
            if probe or (shared is not None and shared.health in ("open", "half_open")):
                self._tell("ok")
            if message.outcome == "ok":
                self._latency = (
                    message.latency_s
                    if self._latency is None
                    else self._latency + LATENCY_ALPHA * (message.latency_s - self._latency)
                )
        else:
            health.on_released()
            if probe:
                self._tell("release")
        if health.state == "open" and before != "open":
            self._counters["breaker_opens"] += 1
        if failure is not None:
            self._last = (self._last[0], f"{failure.code}: {failure.message}"[:300])
            log.warning("deployment %s: %s (%s)", self.config.name, failure.message, health.state)

    def _tell(self, event: str, seconds: float = 0.0) -> None:
        """Queue a health event for the shared state (shared mode, while Redis answers)."""
        if self._cluster is not None and not self._side.alone:
            self._events.append((event, math.ceil(seconds * 1000)))
            self._wake.set()

    def _publish(self, now: float) -> None:
        health = self._health
        health.refresh(now)
        state, available_at = health.state, health.retry_at(now)
        shared = self._state if self._cluster is not None and not self._side.alone else None
        if shared is None:
            views = {
                name: WindowView(used=w.used(now), limit=w.limit, clear_at=w.clear_at(now))
                for name, w in self._windows.items()
            }
        else:
            limits = self._limits(self.config)
            views = {
                name: WindowView(used=used, limit=limits[name], clear_at=self._side.local_time(clear_ms))
                for name, (used, clear_ms) in shared.windows.items()
                if name in limits
            }
            state, until = shared.health, self._side.local_time(shared.health_until_ms)
            if state in ("cooling", "open") and until <= now:
                state = "closed" if state == "cooling" else "half_open"
            available_at = until if state in ("cooling", "open") else now
        room = min((max(v.limit - v.used, 0) / v.limit for v in views.values() if v.limit), default=1.0)
        self.snapshot = DeploymentSnapshot(
            name=self.config.name,
            model=self.config.model,
            region=self.config.region,
            weight=self.config.weight,
            enabled=self.config.enabled,
            in_flight=len(self._open),
            fleet_in_flight=len(self._open) + (self._others_in_flight if shared is not None else 0),
            requests=self._counters["requests"],
            failures=self._counters["failures"],
            tokens_used=self._counters["tokens_used"],
            cooldowns=self._counters["cooldowns"],
            breaker_opens=self._counters["breaker_opens"],
            health=state,
            available_at=available_at,
            room=room,
            windows=views,
            last_outcome=self._last[0],
            last_error=self._last[1],
            latency_s=self._latency,
        )
