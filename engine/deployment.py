"""The deployment actor: one per configured upstream deployment.

It owns the deployment's accounting: requests in flight, outcomes, estimated and settled
tokens. It grants or refuses a slot for an estimated token count (:class:`Acquire`) and
takes the real usage back afterwards (:class:`Finish`). It never makes the HTTP call: the
request's own task does, so a slow upstream never blocks the actor.

Windows (RPM/TPM/hourly tokens) and health (cooldown, circuit breaker) are the routing
issue's; the protocol already carries what they need (estimated tokens at admission, real
usage and the outcome at finish).

Mailbox: bounded (:data:`MAILBOX_SIZE`); a full mailbox makes the sender wait.
"""

from __future__ import annotations

import itertools
import logging
import time

import attrs
import trio

from engine.config import DeploymentConfig
from engine.mailbox import Reply, ask
from engine.providers.base import Provider, Usage

log = logging.getLogger("omixa.deployment")

MAILBOX_SIZE = 256
# Bound on waiting for room in a full mailbox to return a slot.
FINISH_TIMEOUT = 5.0


@attrs.frozen(kw_only=True)
class Slot:
    """Permission to send one request to a deployment."""

    id: int
    deployment: str
    estimated_tokens: int


@attrs.frozen(kw_only=True)
class Refused:
    reason: str
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class Acquire:
    request_id: str
    estimated_tokens: int
    reply: Reply[Slot | Refused]


@attrs.frozen(kw_only=True)
class Finish:
    """The request that held ``slot`` is over. ``usage`` is None when the upstream never
    reported it; ``outcome`` is "ok" or an error code."""

    slot: Slot
    usage: Usage | None
    outcome: str
    latency_s: float


@attrs.frozen(kw_only=True)
class DeploymentSnapshot:
    """What the router and operators may read; only the actor writes it."""

    name: str
    model: str
    region: str | None
    weight: float
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    tokens_used: int = 0
    last_outcome: str | None = None
    last_latency_s: float | None = None
    healthy: bool = True


class DeploymentActor:
    """Owns one deployment's state. Start with ``nursery.start(actor.run)``."""

    def __init__(self, config: DeploymentConfig, provider: Provider) -> None:
        self.config = config
        self.provider = provider
        self.snapshot = DeploymentSnapshot(
            name=config.name, model=config.model, region=config.region, weight=config.weight
        )
        self._send, self._receive = trio.open_memory_channel[Acquire | Finish](MAILBOX_SIZE)
        self._ids = itertools.count(1)
        self._open: dict[int, float] = {}

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

    async def finish(self, slot: Slot, usage: Usage | None, outcome: str, latency_s: float) -> None:
        """Give the slot back with what happened. Never raises on a closed mailbox.

        Cancellation: the slot is returned even if the caller is being cancelled (a full
        mailbox is waited on in a shielded, bounded step), so no slot is ever lost.
        """
        message = Finish(slot=slot, usage=usage, outcome=outcome, latency_s=latency_s)
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

    def close(self) -> None:
        """Close the mailbox: the actor finishes what is queued and returns."""
        self._send.close()

    # -- the actor ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for message in self._receive:
            if isinstance(message, Acquire):
                self._on_acquire(message)
            else:
                self._on_finish(message)

    def _on_acquire(self, message: Acquire) -> None:
        if not self.config.enabled:
            message.reply.send(Refused(reason="disabled"))
            return
        slot = Slot(
            id=next(self._ids), deployment=self.config.name, estimated_tokens=message.estimated_tokens
        )
        self._open[slot.id] = time.monotonic()
        snap = self.snapshot
        self.snapshot = attrs.evolve(snap, in_flight=snap.in_flight + 1)
        if not message.reply.send(slot):
            self._on_finish(Finish(slot=slot, usage=None, outcome="cancelled", latency_s=0.0))

    def _on_finish(self, message: Finish) -> None:
        if self._open.pop(message.slot.id, None) is None:
            return  # already finished: a repeated Finish changes nothing
        snap = self.snapshot
        used = 0
        if message.usage is not None:
            used = message.usage.prompt_tokens + message.usage.completion_tokens
        failed = message.outcome not in ("ok", "cancelled", "client_closed", "interrupted")
        self.snapshot = attrs.evolve(
            snap,
            in_flight=snap.in_flight - 1,
            requests=snap.requests + (message.outcome != "cancelled"),
            failures=snap.failures + failed,
            tokens_used=snap.tokens_used + used,
            last_outcome=message.outcome,
            last_latency_s=message.latency_s if message.outcome == "ok" else snap.last_latency_s,
        )
