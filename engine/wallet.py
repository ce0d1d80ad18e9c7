"""Wallet actors: one per account, spawned on demand, retired when idle.

A wallet actor serializes the account's money movements in this process: reserve (hold),
settle (charge at most the hold, release the rest) and release (void). The database's
conditional update stays the arbiter across processes; the actor is the only writer of its
account's balance here, so holds never race each other inside one process.

Reserve-then-settle: the hold covers the most the request can cost (prompt tokens counted
offline plus every output token of the cap). When the wallet cannot cover the model's
default output cap, the cap is lowered to what it can cover, down to
``wallet.min_output_tokens``; a cap the client chose is never lowered (402 instead).

Group commit: an actor takes every message already waiting in its mailbox (up to
:data:`MAX_BATCH`) and applies them in one storage transaction
(:meth:`storage.Storage.apply_wallet_ops`): one transaction and one commit for a burst of
holds and settles instead of one each (on PostgreSQL one bridge crossing and one pool
checkout; on SQLite one worker-thread hop). A hold the batch could not fund is tried again on its
own after the batch (with the cap lowering below), when the batch's settles have released
what they free: the outcome is one the messages could have had alone, in some order of
arrival. A lone message is applied on its own at once: batching never waits for company.

Each hold re-checks, in its transaction, that the request's key is still live, so a key
revoked by any process holds nothing (:class:`~engine.errors.InvalidApiKey`), whatever a
process's key cache says.

Mailboxes are bounded (:data:`MAILBOX_SIZE`); senders wait when one is full.
"""

from __future__ import annotations

import datetime as dt
import logging

import attrs
import trio

from omixa.engine.catalog import Prices, affordable_output_tokens, max_cost
from omixa.engine.config import WalletConfig
from omixa.engine.errors import InsufficientBalance, InternalError, InvalidApiKey, ServiceUnavailable, store_unavailable
from omixa.engine.mailbox import Reply, ask
from omixa.storage import (
    FinalizeHold,
    Hold,
    HoldContext,
    KeyRevoked,
    NewHold,
    NotFound,
    RequestLog,
    Settlement,
    Storage,
    StorageError,
    WalletOp,
)

log = logging.getLogger("omixa.wallet")

# A hold whose caller says nothing about itself (frozen, so one instance serves every call).
NO_CONTEXT = HoldContext()

MAILBOX_SIZE = 64
# The most messages one group commit applies (one storage transaction).
MAX_BATCH = 64


@attrs.frozen(kw_only=True)
class Reserve:
    """Hold the most a request can cost.

    ``min_output_tokens`` None means the output cap is the client's and may not be lowered.
    ``amount``, when set, is the hold itself (an image request's worst case): it is held as
    is or refused, and the cap is not priced.
    """

    request_id: str
    prompt_tokens: int
    output_tokens: int  # cap per choice
    choices: int
    prices: Prices
    min_output_tokens: int | None
    reply: Reply[Reserved]
    # Who asks (key, model, stream); the pool adds this process's instance id.
    context: HoldContext = NO_CONTEXT
    amount: int | None = None


@attrs.frozen(kw_only=True)
class Reserved:
    hold: Hold
    output_tokens: int  # the cap per choice the hold covers (maybe lowered)


@attrs.frozen(kw_only=True)
class Settle:
    hold_id: str
    charge: int
    reply: Reply[Settlement]
    # The request's log, kept with the hold until the usage aggregator writes it.
    log: RequestLog | None = None


@attrs.frozen(kw_only=True)
class Release:
    hold_id: str
    reply: Reply[Settlement]
    log: RequestLog | None = None


Message = Reserve | Settle | Release


class WalletActor:
    def __init__(self, account_id: str, pool: WalletPool) -> None:
        self.account_id = account_id
        self._pool = pool
        self.send, self._receive = trio.open_memory_channel[Message](MAILBOX_SIZE)
        self._in_flight: list[Message] = []  # the batch being served

    async def run(self) -> None:
        idle = self._pool.config.idle_seconds
        try:
            while True:
                # Only the wait is under the idle timer: a message being handled is never
                # cancelled half-way by it.
                message = None
                with trio.move_on_after(idle):
                    try:
                        message = await self._receive.receive()
                    except trio.EndOfChannel:
                        return  # the pool is closing and the mailbox is drained
                if message is None:
                    break
                await self._handle_batch(self._drain(message))
            # Retire: leave the registry first (no checkpoint in between), then serve what
            # is already queued; senders that find the mailbox closed spawn a new actor.
            self._pool._forget(self)
            while True:
                try:
                    message = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await self._handle(message)
        finally:
            self._pool._forget(self)
            # Anything in hand or still queued (the actor is being cancelled) gets an
            # answer, not silence.
            for message in self._in_flight:
                self._fail(message, ServiceUnavailable())
            while True:
                try:
                    message = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._fail(message, ServiceUnavailable())
            self._receive.close()

    def _drain(self, first: Message) -> list[Message]:
        """``first`` and whatever else is already queued, up to :data:`MAX_BATCH`."""
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch

    async def _handle_batch(self, batch: list[Message]) -> None:
        """Group commit: every message already queued is applied in one storage transaction
        (one commit). A hold refused for want of funds, and every message of a batch that a
        step refused (a revoked key, an unknown hold), is served again on its own; a
        database failure fails every message of the batch, as it would fail each alone."""
        self._in_flight = batch
        if len(batch) == 1:
            await self._handle(batch[0])
            return
        try:
            results = await self._pool.storage.apply_wallet_ops([self._op(m) for m in batch])
            self._pool.group_commits += 1
            self._pool.grouped_messages += len(batch)
        except (KeyRevoked, NotFound):
            # A step refused, so the batch rolled back: find it by serving each on its own.
            for message in batch:
                await self._handle(message)
            return
        except StorageError as exc:
            # Maybe committed (a connection lost during the commit): serving the batch again
            # could hold twice. Each requester gets what a lone message would get.
            log.error("wallet %s: storage failed: %s", self.account_id, exc)
            for message in batch:
                self._fail(message, store_unavailable("wallet"))
            return
        except Exception:
            log.exception("wallet %s: a batch of %d failed", self.account_id, len(batch))
            for message in batch:
                self._fail(message, InternalError())
            return
        # Every committed result is delivered before anything else is awaited, so a
        # cancellation after this point cannot turn a committed hold into a 503.
        unfunded: list[Reserve] = []
        abandoned: list[Hold] = []
        for message, result in zip(batch, results, strict=True):
            if not isinstance(message, Reserve):
                assert isinstance(result, Settlement)  # a settle or release answers with one
                message.reply.send(result)
            elif result is None:
                unfunded.append(message)
            else:
                assert isinstance(result, Hold)
                if not message.reply.send(Reserved(hold=result, output_tokens=message.output_tokens)):
                    abandoned.append(result)
        for hold in abandoned:
            await self._void_abandoned(hold)
        for message in unfunded:
            await self._handle(message)  # the lowered-cap path, or 402

    def _op(self, message: Message) -> WalletOp:
        if isinstance(message, Reserve):
            return self._new_hold(message, message.output_tokens)
        if isinstance(message, Settle):
            return FinalizeHold(hold_id=message.hold_id, charge=message.charge, log=message.log)
        return FinalizeHold(hold_id=message.hold_id, void=True, log=message.log)

    def _new_hold(self, msg: Reserve, cap: int) -> NewHold:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._pool.config.hold_timeout_seconds)
        amount = msg.amount or max(max_cost(msg.prompt_tokens, cap * msg.choices, msg.prices), 1)
        return NewHold(
            account_id=self.account_id,
            request_id=msg.request_id,
            amount=amount,
            expires_at=expires,
            context=msg.context,
        )

    async def _deliver(self, message: Reserve, reserved: Reserved) -> None:
        if not message.reply.send(reserved):
            await self._void_abandoned(reserved.hold)

    async def _void_abandoned(self, hold: Hold) -> None:
        """The requester was cancelled while we held money for it: undo."""
        try:
            await self._pool.storage.void_hold(hold.id)
        except Exception:
            log.exception("wallet %s: voiding abandoned hold %s failed; it expires later", self.account_id, hold.id)

    async def _handle(self, message: Message) -> None:
        """Serve one message; every failure becomes the requester's exception, never the
        actor's (one bad request must not take other accounts' actors down)."""
        try:
            if isinstance(message, Reserve):
                await self._deliver(message, await self._reserve(message))
            elif isinstance(message, Settle):
                message.reply.send(
                    await self._pool.storage.settle_hold(message.hold_id, message.charge, log=message.log)
                )
            else:
                message.reply.send(await self._pool.storage.void_hold(message.hold_id, log=message.log))
        except InsufficientBalance as exc:
            self._fail(message, exc)
        except KeyRevoked:
            self._fail(message, InvalidApiKey())
        except StorageError as exc:
            log.error("wallet %s: storage failed: %s", self.account_id, exc)
            self._fail(message, store_unavailable("wallet"))
        except Exception:
            log.exception("wallet %s: handling %s failed", self.account_id, type(message).__name__)
            self._fail(message, InternalError())

    @staticmethod
    def _fail(message: Message, exc: Exception) -> None:
        if not message.reply.answered:
            message.reply.fail(exc)

    async def _reserve(self, msg: Reserve) -> Reserved:
        storage = self._pool.storage
        cap = msg.output_tokens
        for _ in range(2):
            (hold,) = await storage.apply_wallet_ops([self._new_hold(msg, cap)])
            if hold is not None:
                assert isinstance(hold, Hold)  # a new hold answers with one, or None (unfunded)
                return Reserved(hold=hold, output_tokens=cap)
            if msg.min_output_tokens is None or msg.amount is not None:
                break
            wallet = await storage.get_wallet(self.account_id)
            if wallet is None:
                break
            affordable = affordable_output_tokens(wallet.available, msg.prompt_tokens, msg.prices)
            cap = min(cap, affordable // msg.choices)
            if cap < msg.min_output_tokens:
                break
        raise InsufficientBalance()


class WalletPool:
    """Spawns wallet actors on demand and routes messages to them."""

    def __init__(self, storage: Storage, config: WalletConfig, *, instance_id: str | None = None) -> None:
        self.storage = storage
        self.config = config
        self.instance_id = instance_id
        # Set when run() returns normally: every actor served its mailbox.
        self.drained = trio.Event()
        self._actors: dict[str, WalletActor] = {}
        # Group commits applied (batches of two messages or more) and the messages in them.
        self.group_commits = 0
        self.grouped_messages = 0
        self.expired_holds = 0  # pending holds past their expiry that the sweeper voided
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._closed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the wallet actors and the expired-hold sweeper until :meth:`close`.

        Returns once every actor has served what was queued before the close.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            sweeper = trio.CancelScope()
            nursery.start_soon(self._sweep_expired_holds, sweeper, name="wallet-hold-sweeper")
            task_status.started()
            await self._closed.wait()
            sweeper.cancel()
        self._nursery = None
        self.drained.set()

    def close(self) -> None:
        """Stop accepting new work; queued messages are served, then the actors return."""
        self._closing = True
        for actor in list(self._actors.values()):
            actor.send.close()
        self._closed.set()

    def mailbox_depths(self) -> tuple[int, int]:
        """The wallet actors alive now, and the deepest of their mailboxes."""
        actors = list(self._actors.values())
        return len(actors), max((a.send.statistics().current_buffer_used for a in actors), default=0)

    def _forget(self, actor: WalletActor) -> None:
        if self._actors.get(actor.account_id) is actor:
            del self._actors[actor.account_id]

    def _actor(self, account_id: str) -> WalletActor:
        actor = self._actors.get(account_id)
        if actor is None:
            if self._closing or self._nursery is None:
                raise ServiceUnavailable()
            actor = WalletActor(account_id, self)
            self._actors[account_id] = actor
            self._nursery.start_soon(actor.run, name=f"wallet-{account_id}")
        return actor

    async def _ask(self, account_id: str, make: type[Message], **fields: object) -> object:
        # A mailbox closed by retirement is refused before anything was delivered: retry
        # on a fresh actor.
        for _ in range(3):
            reply: Reply[object] = Reply()
            message = make(reply=reply, **fields)  # type: ignore[arg-type]
            try:
                return await ask(self._actor(account_id).send, message, reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            except trio.Cancelled:
                if isinstance(reply.unclaimed, Reserved):
                    with trio.move_on_after(5, shield=True):
                        await self.storage.void_hold(reply.unclaimed.hold.id)
                raise
        raise ServiceUnavailable()

    async def reserve(self, account_id: str, *, context: HoldContext = NO_CONTEXT, **fields: object) -> Reserved:
        """Hold money for a request. Errors: InsufficientBalance, ServiceUnavailable."""
        context = attrs.evolve(context, instance_id=self.instance_id)
        return await self._ask(account_id, Reserve, context=context, **fields)  # type: ignore[return-value]

    async def settle(self, account_id: str, hold_id: str, charge: int, *, log: RequestLog | None = None) -> Settlement:
        """Charge at most the hold and release the rest (idempotent), keeping the request's
        ``log`` with the hold in the same transaction (:class:`storage.FinalizeHold`)."""
        return await self._ask(account_id, Settle, hold_id=hold_id, charge=charge, log=log)  # type: ignore[return-value]

    async def release(self, account_id: str, hold_id: str, *, log: RequestLog | None = None) -> Settlement:
        """Void the hold entirely (idempotent), keeping ``log`` with it like :meth:`settle`."""
        return await self._ask(account_id, Release, hold_id=hold_id, log=log)  # type: ignore[return-value]

    async def finalize(self, account_id: str, hold: Hold, cost: int, *, entry: RequestLog, request_id: str) -> int:
        """End a request's ``hold``: charge ``cost`` (at most the hold; release it all when
        0), keeping the request's log ``entry`` with the hold in the same transaction (so a
        crash cannot lose the record of a charge), retrying a store that is briefly away
        until the caller's deadline; returns what was charged. Never raises."""
        if cost > hold.amount:
            log.warning("request %s: usage cost %d exceeds hold %d; charging the hold", request_id, cost, hold.amount)
            cost = hold.amount
        backoff = 0.05
        while True:
            try:
                if cost > 0:
                    settled = await self.settle(account_id, hold.id, cost, log=entry)
                else:
                    settled = await self.release(account_id, hold.id, log=entry)
                if settled.already_final and cost > 0:
                    # Someone else finalized the hold first: the hold sweeper (a request
                    # longer than wallet.hold_timeout_seconds) or a recovery that took this
                    # process for dead. The usage goes unbilled; say so loudly.
                    log.error(
                        "request %s: hold %s was already final; %d nano-dollars of usage not charged",
                        request_id,
                        hold.id,
                        cost,
                    )
                return settled.charged
            except ServiceUnavailable:
                log.warning("request %s: wallet unavailable; retrying settle", request_id)
            except Exception:
                log.exception("request %s: settling hold %s failed", request_id, hold.id)
                return 0
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _sweep_expired_holds(self, scope: trio.CancelScope) -> None:
        interval = min(60.0, self.config.hold_timeout_seconds / 4)
        with scope:
            while True:
                await trio.sleep(interval)
                try:
                    voided = await self.storage.expire_holds(dt.datetime.now(dt.UTC))
                except StorageError as exc:
                    log.warning("hold sweeper: storage failed: %s", exc)
                    continue
                if voided:
                    self.expired_holds += voided
                    log.warning("hold sweeper: voided %d expired holds", voided)
