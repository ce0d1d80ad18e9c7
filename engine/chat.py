"""A paid model call: check, hold, route, call, relay, settle, record.

Chat completions, embeddings and image generations all take this path; each checked request
(:class:`ModelCall`: :class:`~engine.chat_request.ChatRequest`,
:class:`~engine.embeddings.EmbeddingRequest`, :class:`~engine.images.ImageRequest`) says
what to hold, what to send to a deployment, which adapter call makes it, and what its usage
costs. Every request that passes the checks follows one path:
1. the wallet actor holds the most the request can cost (:mod:`engine.wallet`);
2. the router obtains a slot on a deployment of the model (:mod:`engine.router`);
3. the request's own task calls the upstream (an adapter of :mod:`engine.providers`);
4. :meth:`Exchange.finish` settles the hold from the upstream's usage, gives the slot back
   with the outcome and hands a request log to the usage aggregator, exactly once, in a
   shielded, time-bounded step, whatever ended the request (success, upstream error, client
   gone, shutdown).

What is charged: the upstream's reported usage at the catalog price (for chat, at the prices
of the service tier the answer reports: priority or standard), never more than the hold.
When the upstream never reported usage:
- the client left (or shutdown cut the request) after the request reached the upstream:
  its prompt tokens (counted offline; the upstream had them) plus the completion tokens
  actually delivered, counted with the model's tokenizer;
- the upstream failed mid-stream after content was delivered: the same;
- the upstream failed before any content reached the client: nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from omixa.engine.catalog import Catalog
from omixa.engine.chat_request import ChatRequest, parse_chat_request
from omixa.engine.config import StreamingConfig, UpstreamConfig, WalletConfig
from omixa.engine.errors import (
    NoHealthyDeployment,
    OmixaError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    translate_upstream,
)
from omixa.engine.keylimits import KeyLimiter
from omixa.engine.model_call import ModelCall
from omixa.engine.providers.base import Provider, SseEvent, Usage
from omixa.engine.relay import StreamRelay
from omixa.engine.router import Lease, Router
from omixa.engine.tokens import count_text
from omixa.engine.usage import UsageAggregator
from omixa.engine.wallet import WalletPool
from omixa.storage import ApiKeyRecord, Hold, HoldContext, RequestLog

log = logging.getLogger("omixa.chat")

# Bound on the shielded settle-and-record step that ends every request.
FINISH_TIMEOUT = 10.0


@attrs.frozen(kw_only=True)
class Caller:
    request_id: str
    key: ApiKeyRecord

    @property
    def account_id(self) -> str:
        return self.key.account_id

    @property
    def key_id(self) -> str:
        return self.key.id


T = TypeVar("T")


def _retryable(exc: OmixaError) -> bool:
    """Failures another deployment may not have: 429, 5xx, unreachable, timeout."""
    if isinstance(exc, UpstreamTimeout):
        return True
    return isinstance(exc, UpstreamError) and (
        exc.upstream_status is None or exc.upstream_status == 429 or exc.upstream_status >= 500
    )


class Exchange:
    """One request's money and accounting, from hold to record. Finishes exactly once."""

    def __init__(self, service: ChatService, caller: Caller, request: ModelCall) -> None:
        self.service = service
        self.caller = caller
        self.request = request
        self.hold: Hold | None = None
        self.lease: Lease | None = None
        self.reached_upstream = False
        self.estimated_tokens = 0
        self.admitted_at: float | None = None  # when the key's limits counted this call
        self.upstream_body: dict[str, Any] = {}
        self.service_tier: str | None = None  # the tier the answer reports, if any
        # Attempts: deployments that failed this request, the last failure, the deadline.
        self.tried: set[str] = set()
        self.last_failure: OmixaError | None = None
        self.deadline: float | None = None
        self.attempt_started = 0.0
        self.started = time.monotonic()
        self.created_at = dt.datetime.now(dt.UTC)
        self.first_token_at: float | None = None
        self.finished = False

    def cancelled_status(self) -> str:
        """Why a cancelled request ended: the client left, or the server was shutting down."""
        return "interrupted" if self.service.draining else "client_closed"

    def release_prompt(self) -> None:
        """Forget the request's body once no other attempt can resend it (a stream's first
        content is out): a long stream then holds nothing of its prompt."""
        self.upstream_body = {}
        self.request = attrs.evolve(self.request, body={})

    def delivered_usage(self, delivered_text: str) -> Usage:
        """What to charge when the upstream reported no usage."""
        if not self.reached_upstream:
            return Usage()
        return Usage(
            prompt_tokens=self.request.prompt_tokens,
            completion_tokens=count_text(delivered_text, self.request.model.encoding),
        )

    async def finish(self, status: str, usage: Usage | None, failure: OmixaError | None = None) -> None:
        """Settle, give the slot back (with the upstream's ``failure``, if any, for its
        health) and record. Shielded and bounded; never raises."""
        if self.finished:
            return
        self.finished = True
        latency = time.monotonic() - self.started
        cost = self.request.cost(usage, self.service_tier) if usage is not None else 0
        charged = 0
        if self.admitted_at is not None:
            used = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
            self.service.limits.settle(self.caller.key_id, self.admitted_at, self.request.estimated_tokens, used)
        entry = self._log(status, usage or Usage(), 0, latency)
        with trio.move_on_after(FINISH_TIMEOUT, shield=True) as scope:
            if self.hold is not None:
                charged = await self._settle(cost, entry)
            if self.lease is not None:
                await self.lease.finish(usage, status, latency, failure)
        if scope.cancelled_caught:
            log.error("request %s: settling timed out; the hold expires later", self.caller.request_id)
        self.service.usage.record(attrs.evolve(entry, cost=charged), self.hold.id if self.hold is not None else None)

    async def _settle(self, cost: int, entry: RequestLog) -> int:
        """Charge ``cost`` (at most the hold), keeping the request's log ``entry`` with the
        hold in the same transaction (so a crash cannot lose the record of a charge),
        retrying a store that is briefly away until the enclosing deadline; returns what was
        charged."""
        assert self.hold is not None
        if cost > self.hold.amount:
            log.warning(
                "request %s: usage cost %d exceeds hold %d; charging the hold",
                self.caller.request_id,
                cost,
                self.hold.amount,
            )
            cost = self.hold.amount
        wallets = self.service.wallets
        backoff = 0.05
        while True:
            try:
                if cost > 0:
                    settled = await wallets.settle(self.caller.account_id, self.hold.id, cost, log=entry)
                else:
                    settled = await wallets.release(self.caller.account_id, self.hold.id, log=entry)
                if settled.already_final and cost > 0:
                    # Someone else finalized the hold first: the hold sweeper (a request
                    # longer than wallet.hold_timeout_seconds) or a recovery that took this
                    # process for dead. The usage goes unbilled; say so loudly.
                    log.error(
                        "request %s: hold %s was already final; %d nano-dollars of usage not charged",
                        self.caller.request_id,
                        self.hold.id,
                        cost,
                    )
                return settled.charged
            except ServiceUnavailable:
                log.warning("request %s: wallet unavailable; retrying settle", self.caller.request_id)
            except Exception:
                log.exception("request %s: settling hold %s failed", self.caller.request_id, self.hold.id)
                return 0
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    def _log(self, status: str, usage: Usage, charged: int, latency: float) -> RequestLog:
        lease = self.lease
        ttft = self.first_token_at
        return RequestLog(
            id=self.caller.request_id,
            account_id=self.caller.account_id,
            key_id=self.caller.key_id,
            model=self.request.model.id,
            provider=lease.actor.provider.name if lease else self.request.model.provider,
            deployment=lease.actor.config.name if lease else None,
            region=lease.actor.config.region if lease else None,
            status=status,
            stream=self.request.stream,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cached_tokens=usage.cached_tokens,
            cost=charged,
            latency_ms=round(latency * 1000),
            ttft_ms=round((ttft - self.started) * 1000) if ttft is not None else None,
            created_at=self.created_at,
        )


class ChatService:
    def __init__(
        self,
        *,
        catalog: Catalog,
        router: Router,
        wallets: WalletPool,
        usage: UsageAggregator,
        wallet_config: WalletConfig,
        streaming: StreamingConfig,
        upstream: UpstreamConfig,
        limits: KeyLimiter,
    ) -> None:
        self.catalog = catalog
        self.router = router
        self.wallets = wallets
        self.usage = usage
        self.wallet_config = wallet_config
        self.streaming = streaming
        self.upstream = upstream
        self.limits = limits
        # Set when shutdown begins: requests cancelled from then on are "interrupted".
        self.draining = False

    def parser(self) -> Callable[[Any], ChatRequest]:
        """A checker of chat request bodies against the deployments enabled now. It reads no
        actor state when called, so it may run in a worker thread (:mod:`engine.intake`).
        Its errors: InvalidRequest, ModelNotFound."""
        return partial(
            parse_chat_request,
            catalog=self.catalog,
            enabled=self.router.models(),
            priority_models=self.router.priority_models(),
        )

    async def _begin(self, exchange: Exchange) -> dict[str, Any]:
        """Count the call's tokens against the key's limit, hold the money; return the
        upstream body. (Its request was counted by :class:`engine.intake.Intake` already.)

        Errors: RateLimited, InvalidRequest (the estimate exceeds the key's whole limit),
        InsufficientBalance, ServiceUnavailable.
        """
        request = exchange.request
        now = trio.current_time()
        self.limits.admit_tokens(exchange.caller.key, request.estimated_tokens, now)
        exchange.admitted_at = now
        reserved = await self.wallets.reserve(
            exchange.caller.account_id,
            request_id=exchange.caller.request_id,
            prompt_tokens=request.prompt_tokens,
            output_tokens=request.output_tokens,
            choices=request.choices,
            prices=request.hold_prices,
            min_output_tokens=None if request.cap_is_clients else self.wallet_config.min_output_tokens,
            amount=request.hold_amount,
            context=HoldContext(
                key_id=exchange.caller.key_id,
                model=request.model.id,
                provider=request.model.provider,
                stream=request.stream,
            ),
        )
        exchange.hold = reserved.hold
        exchange.estimated_tokens = request.prompt_tokens + reserved.output_tokens * request.choices
        exchange.upstream_body = request.build_body(reserved.output_tokens)
        return exchange.upstream_body

    async def _call_upstream(self, exchange: Exchange, call: Callable[[Provider, dict[str, Any]], Awaitable[T]]) -> T:
        """Run ``call`` on a deployment the router grants, failing over to another one on a
        429, 5xx, connection error or timeout, up to ``upstream.max_attempts`` attempts within
        ``upstream.request_timeout_seconds`` (counted per request, across a stream's
        failovers too). A non-streaming attempt has its own bound, the deployment's
        ``attempt_timeout_seconds`` (else upstream's): a deployment that takes the request
        and never answers times out (counting against its health) while the request's
        budget still leaves time to try another. The hold is the same for every attempt;
        each failed attempt gives its slot back with the failure (which cools the
        deployment down or counts towards its breaker). ``call`` gets the deployment's
        adapter and the body as sent to that deployment (``for_deployment``).

        Errors: the last upstream failure when attempts run out or no other deployment can
        take the request; NoHealthyDeployment when none could take it at all.
        """
        if exchange.deadline is None:
            exchange.deadline = trio.current_time() + self.upstream.request_timeout_seconds
        while True:
            try:
                exchange.lease = await self.router.acquire(
                    exchange.request.model.id,
                    exchange.caller.request_id,
                    exchange.estimated_tokens,
                    exclude=exchange.tried,
                    prefer=exchange.request.prefers,
                )
            except NoHealthyDeployment:
                if exchange.last_failure is not None:
                    raise exchange.last_failure from None
                raise
            exchange.reached_upstream = True
            exchange.attempt_started = time.monotonic()
            try:
                actor = exchange.lease.actor
                body = exchange.request.for_deployment(exchange.upstream_body, actor.config)
                if exchange.request.stream:
                    return await call(actor.provider, body)  # the head's own bound: timeout_seconds
                bound = min(
                    actor.config.attempt_timeout_seconds or self.upstream.attempt_timeout_seconds,
                    exchange.deadline - trio.current_time(),
                )
                with trio.move_on_after(bound):
                    return await call(actor.provider, body)
                raise UpstreamTimeout()
            except (UpstreamError, UpstreamTimeout) as exc:
                if not self.may_fail_over(exchange, exc):
                    raise
                await self.retire_attempt(exchange, exc)

    def may_fail_over(self, exchange: Exchange, failure: OmixaError) -> bool:
        """Whether ``failure`` of the current attempt may be retried on another deployment."""
        return (
            _retryable(failure)
            and len(exchange.tried) + 1 < self.upstream.max_attempts
            and exchange.deadline is not None
            and trio.current_time() < exchange.deadline
        )

    async def retire_attempt(self, exchange: Exchange, failure: OmixaError) -> None:
        """Give the failed attempt's slot back with its failure; exclude its deployment."""
        lease, exchange.lease = exchange.lease, None
        assert lease is not None
        latency = time.monotonic() - exchange.attempt_started
        await lease.finish(None, translate_upstream(failure).code, latency, failure)
        exchange.tried.add(lease.actor.config.name)
        exchange.last_failure = failure
        log.warning(
            "request %s: deployment %s failed (%s); failing over",
            exchange.caller.request_id,
            lease.actor.config.name,
            failure.message,
        )

    async def reopen_stream(
        self, exchange: Exchange
    ) -> tuple[AbstractAsyncContextManager[AsyncIterator[SseEvent]], AsyncIterator[SseEvent]]:
        """Open the stream on the next deployment that takes it (the relay's failover)."""
        return await self._call_upstream(exchange, _open_stream)

    async def complete(self, caller: Caller, request: ModelCall) -> dict[str, Any]:
        """A non-streaming call (a chat completion, embeddings, images): the upstream's
        answer, paid for.

        Errors: InsufficientBalance, NoHealthyDeployment, InvalidRequest (upstream 4xx),
        UpstreamError, UpstreamTimeout, ServiceUnavailable.
        Cancellation: the upstream call is abandoned (connection closed) and the request is
        settled as ``client_closed`` (``interrupted`` when the server is shutting down).
        """
        exchange = Exchange(self, caller, request)
        try:
            await self._begin(exchange)
            completion = await self._call_upstream(exchange, request.send)
        except OmixaError as exc:
            await self._fail(exchange, exc)
            raise translate_upstream(exc) from None
        except BaseException as exc:
            await self._fail(exchange, exc)
            raise
        exchange.first_token_at = time.monotonic()
        tier = completion.body.get("service_tier")
        exchange.service_tier = tier if isinstance(tier, str) else None
        await exchange.finish("ok", request.usage_of(completion))
        return completion.body

    async def open_stream(self, caller: Caller, request: ChatRequest) -> StreamRelay:
        """Start a streaming completion; errors before the upstream's 200 raise here (so
        the client gets a plain HTTP status), later ones become an error event.

        The returned relay owns the upstream response: ``start()`` it in the request's
        nursery, iterate it, and always ``aclose()`` it.
        """
        exchange = Exchange(self, caller, request)
        try:
            await self._begin(exchange)
            stream, events = await self.reopen_stream(exchange)
        except OmixaError as exc:
            await self._fail(exchange, exc)
            raise translate_upstream(exc) from None
        except BaseException as exc:
            await self._fail(exchange, exc)
            raise
        return StreamRelay(exchange, stream, events, self.streaming, self.upstream.idle_timeout_seconds)

    async def _fail(self, exchange: Exchange, exc: BaseException) -> None:
        failure: OmixaError | None = None
        if isinstance(exc, OmixaError):
            status, usage = translate_upstream(exc).code, None
            if isinstance(exc, (UpstreamError, UpstreamTimeout)):
                failure = exc
        elif _is_cancellation(exc):
            status, usage = exchange.cancelled_status(), exchange.delivered_usage("")
        else:
            log.exception("request %s failed", exchange.caller.request_id, exc_info=exc)
            status, usage = "internal_error", None
        await exchange.finish(status, usage, failure)


def _is_cancellation(exc: BaseException) -> bool:
    """Cancelled, or a group of nothing but Cancelled (as a library's nursery raises it)."""
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(trio.Cancelled)[1]
        return rest is None
    return isinstance(exc, trio.Cancelled)


async def _open_stream(
    provider: Provider, body: dict[str, Any]
) -> tuple[AbstractAsyncContextManager[AsyncIterator[SseEvent]], AsyncIterator[SseEvent]]:
    stream = provider.open_stream(body)
    return stream, await stream.__aenter__()
