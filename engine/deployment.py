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

Mailbox: bounded (:data:`MAILBOX_SIZE`); a full mailbox makes the sender wait.
"""

from __future__ import annotations

import itertools
import logging

import attrs
import trio

from omixa.engine.config import BreakerConfig, DeploymentConfig
from omixa.engine.errors import OmixaError, UpstreamBusy, UpstreamError, UpstreamTimeout
from omixa.engine.mailbox import Reply, ask
from omixa.engine.upstream import Provider, Usage
from omixa.engine.windows import Health, SlidingWindow, hour_window, minute_window

log = logging.getLogger("omixa.deployment")

MAILBOX_SIZE = 256
# Bound on waiting for room in a full mailbox to return a slot.
FINISH_TIMEOUT = 5.0
# Weight of a new latency sample in the moving average.
LATENCY_ALPHA = 0.2


@attrs.frozen(kw_only=True)
class Slot:
    """Permission to send one request to a deployment."""

    id: int
    deployment: str
    estimated_tokens: int
    admitted_at: float


@attrs.frozen(kw_only=True)
class Refused:
    reason: str  # "disabled", "cooling", "open", "probing", "rpm", "tpm", "hourly_tokens", "too_large"
    retry_after: float | None = None  # seconds until it may have room; None: never


@attrs.frozen(kw_only=True)
class Acquire:
    request_id: str
    estimated_tokens: int
    reply: Reply[Slot | Refused]


@attrs.frozen(kw_only=True)
class Finish:
    """The request (or attempt) that held ``slot`` is over.

    ``usage`` is the real usage when known; ``outcome`` is "ok" or the status recorded;
    ``failure`` the upstream's error, when the upstream failed (it drives health).
    """

    slot: Slot
    usage: Usage | None
    outcome: str
    latency_s: float
    failure: OmixaError | None = None


@attrs.frozen(kw_only=True)
class Retune:
    """New settings for the same deployment; ``provider`` when the adapter must change."""

    config: DeploymentConfig
    provider: Provider | None
    reply: Reply[None]


@attrs.frozen(kw_only=True)
class WindowView:
    used: int
    limit: int
    clear_at: float = 0.0  # trio time when everything now counted will have left the window


@attrs.frozen(kw_only=True)
class DeploymentSnapshot:
    """What the router and operators may read; only the actor writes it."""

    name: str
    model: str
    region: str | None
    weight: float
    enabled: bool
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    tokens_used: int = 0
    health: str = "closed"  # closed, cooling, open, half_open
    available_at: float = 0.0  # trio time from which health lets requests through
    room: float = 1.0  # smallest remaining fraction over the windows (1.0: no limits)
    windows: dict[str, WindowView] = attrs.field(factory=dict)
    last_outcome: str | None = None
    last_error: str | None = None
    latency_s: float | None = None  # moving average of successful requests


class DeploymentActor:
    """Owns one deployment's state. Start with ``nursery.start(actor.run)``."""

    def __init__(self, config: DeploymentConfig, provider: Provider, breaker: BreakerConfig | None = None) -> None:
        breaker = breaker or BreakerConfig()
        self.config = config
        self.provider = provider
        self._windows: dict[str, SlidingWindow] = {}
        self._tune_windows(config)
        self._health = Health(failures_to_open=breaker.failures, cooldown_seconds=breaker.cooldown_seconds)
        self._send, self._receive = trio.open_memory_channel[Acquire | Finish | Retune](MAILBOX_SIZE)
        self._ids = itertools.count(1)
        self._open: dict[int, Slot] = {}
        self._counters = {"requests": 0, "failures": 0, "tokens_used": 0}
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

    def close(self) -> None:
        """Close the mailbox: the actor finishes what is queued and returns."""
        self._send.close()

    def _tune_windows(self, config: DeploymentConfig) -> None:
        limits = {"rpm": config.rpm, "tpm": config.tpm, "hourly_tokens": config.hourly_tokens}
        for name, limit in limits.items():
            if not limit:
                self._windows.pop(name, None)
            elif name in self._windows:
                self._windows[name].limit = limit  # the counts stay; only the limit moves
            else:
                self._windows[name] = hour_window(limit) if name == "hourly_tokens" else minute_window(limit)

    # -- the actor ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
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
        refusal = self._refusal(message.estimated_tokens, now)
        if refusal is not None:
            message.reply.send(refusal)
            return
        slot = Slot(
            id=next(self._ids),
            deployment=self.config.name,
            estimated_tokens=message.estimated_tokens,
            admitted_at=now,
        )
        for name, window in self._windows.items():
            window.add(now, 1 if name == "rpm" else message.estimated_tokens)
        self._health.on_admit()
        self._open[slot.id] = slot
        if not message.reply.send(slot):
            self._on_finish(Finish(slot=slot, usage=None, outcome="cancelled", latency_s=0.0), now)

    def _on_finish(self, message: Finish, now: float) -> None:
        slot = self._open.pop(message.slot.id, None)
        if slot is None:
            return  # already finished: a repeated Finish changes nothing
        counters = self._counters
        if message.usage is not None:
            used = message.usage.prompt_tokens + message.usage.completion_tokens
            counters["tokens_used"] += used
            for name, window in self._windows.items():
                if name != "rpm":
                    window.adjust(slot.admitted_at, used - slot.estimated_tokens)
        if message.outcome != "cancelled":
            counters["requests"] += 1
        self._judge(message, now)
        self._last = (message.outcome, self._last[1])

    def _judge(self, message: Finish, now: float) -> None:
        """Update health from what the upstream did."""
        failure, health = message.failure, self._health
        if isinstance(failure, UpstreamBusy):
            health.on_released()  # our own pool was full: the upstream was never asked
        elif isinstance(failure, UpstreamError) and failure.upstream_status == 429:
            self._counters["failures"] += 1
            health.on_rate_limited(now, failure.retry_after)
        elif isinstance(failure, UpstreamTimeout) or (
            isinstance(failure, UpstreamError) and (failure.upstream_status is None or failure.upstream_status >= 500)
        ):
            self._counters["failures"] += 1
            health.on_failure(now)
        elif failure is not None or message.outcome == "ok":
            health.on_success()  # the upstream answered (a 4xx is the request's fault)
            if message.outcome == "ok":
                self._latency = (
                    message.latency_s
                    if self._latency is None
                    else self._latency + LATENCY_ALPHA * (message.latency_s - self._latency)
                )
        else:
            health.on_released()
        if failure is not None:
            self._last = (self._last[0], f"{failure.code}: {failure.message}"[:300])
            log.warning("deployment %s: %s (%s)", self.config.name, failure.message, health.state)

    def _publish(self, now: float) -> None:
        health = self._health
        health.refresh(now)
        views = {
            name: WindowView(used=w.used(now), limit=w.limit, clear_at=w.clear_at(now))
            for name, w in self._windows.items()
        }
        room = min((max(v.limit - v.used, 0) / v.limit for v in views.values()), default=1.0)
        self.snapshot = DeploymentSnapshot(
            name=self.config.name,
            model=self.config.model,
            region=self.config.region,
            weight=self.config.weight,
            enabled=self.config.enabled,
            in_flight=len(self._open),
            requests=self._counters["requests"],
            failures=self._counters["failures"],
            tokens_used=self._counters["tokens_used"],
            health=health.state,
            available_at=health.retry_at(now),
            room=room,
            windows=views,
            last_outcome=self._last[0],
            last_error=self._last[1],
            latency_s=self._latency,
        )
