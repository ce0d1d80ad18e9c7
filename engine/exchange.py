"""One paid call's exchange with the upstream, top to bottom: hold, route, call, settle, record.

Chat completions, the Responses API, embeddings and image generations all take this path;
each checked request (:class:`~engine.model_call.ModelCall`:
:class:`~engine.chat_request.ChatRequest`, :class:`~engine.responses_request.ResponsesRequest`,
:class:`~engine.embeddings.EmbeddingRequest`, :class:`~engine.images.ImageRequest`) says
what to hold, what to send to a deployment, which adapter call makes it, and what its usage
costs. An :class:`Exchange` is one such request, and it runs the same sequence for all:

1. :meth:`Exchange._reserve`: the key's token limit counts the call and the wallet actor
   holds the most it can cost (:mod:`engine.keylimits`, :mod:`engine.wallet`);
2. :meth:`Exchange._attempt`: the router grants a slot on a deployment of the model
   (:mod:`engine.router`) and the request's own task calls the adapter; a 429, 5xx,
   connection failure or timeout gives the slot back with the failure and tries another
   deployment, within ``upstream.max_attempts`` and ``upstream.request_timeout_seconds``;
3. a stream is handed to :class:`engine.relay.StreamRelay`, which moves its bytes to the
   client and reports to the exchange: content started, the tier billed, a failure before
   any content (the exchange may open another deployment's stream: step 2 again), the end;
4. :meth:`Exchange._finish`: settle the hold from the upstream's usage
   (:meth:`engine.wallet.WalletPool.finalize`), give the slot back
   with the outcome, remember where an answer the upstream stores lives (the Responses
   API: :mod:`engine.stored_responses`), and hand the request log to the usage aggregator,
   exactly once, in a shielded, time-bounded step, whatever ended the request (success,
   upstream error, client gone, shutdown).

Only the exchange writes its own state; the relay below it reports through
:class:`engine.relay.StreamOwner` and never reaches the services.

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
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from omixa.engine.errors import NoHealthyDeployment, OmixaError, UpstreamError, UpstreamTimeout, translate_upstream
from omixa.engine.exchange_context import Caller, Failing, Services, is_cancellation, retryable
from omixa.engine.keylimits import Admitted
from omixa.engine.model_call import ModelCall
from omixa.engine.relay import OpenedStream, StreamRelay
from omixa.engine.router import Lease
from omixa.engine.stream_frames import FrameReader
from omixa.engine.tokens import count_text
from omixa.engine.upstream import CallIds, Provider, Usage
from omixa.storage import Hold, HoldContext, RequestLog, StoredResponse

log = logging.getLogger("omixa.chat")

# Bound on the shielded settle-and-record step that ends every request.
FINISH_TIMEOUT = 10.0
# A request log keeps at most this much of the error message its client was given.
ERROR_MESSAGE_MAX = 1000

T = TypeVar("T")
# Opens a call's stream on a deployment's adapter, with the body as sent there, as an attempt.
Opener = Callable[[Provider, dict[str, Any], CallIds], Awaitable[OpenedStream]]


class Exchange:
    """One request's exchange, from hold to record. Finishes exactly once.

    :meth:`complete` runs a non-streaming call to its end; :meth:`open_stream` returns the
    relay of a stream, which reports back through the :class:`~engine.relay.StreamOwner`
    methods below (``request_id`` to :meth:`stream_ended`).
    """

    def __init__(self, services: Services, caller: Caller, request: ModelCall) -> None:
        self._services = services
        self._caller = caller
        self._request = request
        self.request_id = caller.request_id
        self._started = time.monotonic()
        self._created_at = dt.datetime.now(dt.UTC)
        # Step 1: what the call holds.
        self._admitted: Admitted | None = None  # the key's limits counted this call
        self._hold: Hold | None = None
        self._estimated_tokens = 0
        self._upstream_body: dict[str, Any] = {}
        # Step 2: the attempts. Deployments that failed this request, the last failure.
        self._deadline: float | None = None
        self._lease: Lease | None = None
        self._ids: CallIds | None = None  # the current attempt's (after the last, the last's)
        self._attempt_started = 0.0
        self._tried: set[str] = set()
        self._last_failure: OmixaError | None = None
        self._reached_upstream = False
        # What the answer reported.
        self._service_tier: str | None = None
        self._answer_id: str | None = None  # the id the upstream stores the answer under
        self._answer_items: list[str] = []  # and the ids of its output items
        self._opener: Opener | None = None  # how a stream is opened (again on failover)
        self._first_token_at: float | None = None
        self._relaying = False  # a relay is open (counted in the metrics' open streams)
        self._finished = False
        self._trace = caller.trace  # the request's spans (engine.tracing); None: not traced

    # -- the two ways through -------------------------------------------------------------

    async def complete(self) -> dict[str, Any]:
        """A non-streaming call (a chat completion, embeddings, images): the upstream's
        answer, paid for.

        Errors: InsufficientBalance, NoHealthyDeployment, InvalidRequest (upstream 4xx),
        UpstreamError, UpstreamTimeout, ServiceUnavailable.
        Cancellation: the upstream call is abandoned (connection closed) and the request is
        settled as ``client_closed`` (``interrupted`` when the server is shutting down).
        """
        request = self._request
        async with self._failing():
            await self._reserve()
            completion = await self._attempt(request.send)
        self._first_token_at = time.monotonic()
        tier = completion.body.get("service_tier")
        self._service_tier = tier if isinstance(tier, str) else None
        stored = request.stored_answer(completion.body)
        if stored is not None:
            self._answer_id, self._answer_items = stored.id, list(stored.item_ids)
        await self._finish("ok", request.usage_of(completion))
        return completion.body

    async def open_stream(self, frames: FrameReader, opener: Opener) -> StreamRelay:
        """Start a streaming call: ``opener`` opens it on a deployment's adapter (again on
        each failover), ``frames`` reads its events. Errors before the upstream's 200 raise
        here (so the client gets a plain HTTP status), later ones become an error event.

        The returned relay owns the upstream response: ``start()`` it in the request's
        nursery, iterate it, and always ``aclose()`` it.
        """
        async with self._failing():
            await self._reserve()
            self._opener = opener
            opened = await self._attempt(opener)
        services = self._services
        relay = StreamRelay(self, opened, services.streaming, services.upstream.idle_timeout_seconds, frames=frames)
        if services.metrics is not None:
            services.metrics.open_streams.inc()
            self._relaying = True
        return relay

    # -- step 1: limits and the hold ------------------------------------------------------

    async def _reserve(self) -> None:
        """Count the call's tokens against the key's limit, hold the money, build the
        upstream body. (Its request was counted by :class:`engine.intake.Intake` already.)

        Errors: RateLimited, InvalidRequest (the estimate exceeds the key's whole limit),
        InsufficientBalance, ServiceUnavailable.
        """
        request, caller, services = self._request, self._caller, self._services
        if self._trace is not None:
            self._trace.holding(request)
        now = trio.current_time()
        started = time.monotonic()
        self._admitted = await services.limits.admit_tokens(caller.key, request.estimated_tokens, now)
        reserved = await services.wallets.reserve(
            caller.account_id,
            request_id=caller.request_id,
            prompt_tokens=request.prompt_tokens,
            output_tokens=request.output_tokens,
            choices=request.choices,
            prices=request.hold_prices,
            min_output_tokens=None if request.cap_is_clients else services.wallet.min_output_tokens,
            amount=request.hold_amount,
            context=HoldContext(
                key_id=caller.key_id,
                model=request.model.id,
                provider=request.model.provider,
                stream=request.stream,
            ),
        )
        self._hold = reserved.hold
        if services.metrics is not None:
            call = services.metrics.call(request.api, request.model.id, request.stream)
            call.hold_wait.observe(time.monotonic() - started)
        self._estimated_tokens = request.prompt_tokens + reserved.output_tokens * request.choices
        self._upstream_body = request.build_body(reserved.output_tokens)
        if self._trace is not None:
            self._trace.held(reserved.hold, reserved.output_tokens)

    # -- step 2: attempts and failover ----------------------------------------------------

    async def _attempt(self, call: Callable[[Provider, dict[str, Any], CallIds], Awaitable[T]]) -> T:
        """Run ``call`` on a deployment the router grants, failing over to another one on a
        429, 5xx, connection error or timeout, up to ``upstream.max_attempts`` attempts within
        ``upstream.request_timeout_seconds`` (counted per request, across a stream's
        failovers too). A non-streaming attempt has its own bound, the deployment's
        ``attempt_timeout_seconds`` (else upstream's): a deployment that takes the request
        and never answers times out (counting against its health) while the request's
        budget still leaves time to try another. The hold is the same for every attempt;
        each failed attempt gives its slot back with the failure (which cools the
        deployment down or counts towards its breaker). ``call`` gets the deployment's
        adapter, the body as sent to that deployment (``for_deployment``) and the attempt's
        :class:`~engine.upstream.CallIds`, in which the adapter notes the upstream's id.

        Errors: the last upstream failure when attempts run out or no other deployment can
        take the request; NoHealthyDeployment when none could take it at all.
        """
        request, upstream = self._request, self._services.upstream
        if self._deadline is None:
            self._deadline = trio.current_time() + upstream.request_timeout_seconds
        while True:
            try:
                self._lease = await self._services.router.acquire(
                    request.model.id,
                    self.request_id,
                    self._estimated_tokens,
                    exclude=self._tried,
                    prefer=request.prefers,
                    allow=request.allows,
                )
            except NoHealthyDeployment:
                if self._last_failure is not None:
                    raise self._last_failure from None
                raise
            self._reached_upstream = True
            self._attempt_started = time.monotonic()
            if self._trace is not None:
                self._trace.attempting(self._lease)
            self._ids = ids = CallIds(self.request_id)
            try:
                actor = self._lease.actor
                body = request.for_deployment(self._upstream_body, actor.config)
                if request.stream:
                    return await call(actor.provider, body, ids)  # the head's own bound: timeout_seconds
                bound = min(
                    actor.config.attempt_timeout_seconds or upstream.attempt_timeout_seconds,
                    self._deadline - trio.current_time(),
                )
                with trio.move_on_after(bound):
                    return await call(actor.provider, body, ids)
                raise UpstreamTimeout()
            except (UpstreamError, UpstreamTimeout) as exc:
                if not self.may_fail_over(exc):
                    raise
                await self._retire_attempt(exc)
            finally:
                if self._services.metrics is not None:
                    self._services.metrics.upstream_answered(
                        request.model.id, actor.config.name, time.monotonic() - self._attempt_started
                    )

    def may_fail_over(self, failure: OmixaError) -> bool:
        """Whether ``failure`` of the current attempt may be retried on another deployment."""
        return (
            retryable(failure)
            and len(self._tried) + 1 < self._services.upstream.max_attempts
            and self._deadline is not None
            and trio.current_time() < self._deadline
        )

    async def _retire_attempt(self, failure: OmixaError) -> None:
        """Give the failed attempt's slot back with its failure; exclude its deployment."""
        lease, self._lease = self._lease, None
        assert lease is not None
        if self._trace is not None:
            self._trace.attempt_failed(failure)
        latency = time.monotonic() - self._attempt_started
        status = translate_upstream(failure).code
        await lease.finish(None, status, latency, failure)
        if (metrics := self._services.metrics) is not None:
            metrics.attempt_ended(self._request.model.id, lease.actor.config.name, status, failure)
            metrics.failovers.labels(self._request.model.id, lease.actor.config.name).inc()
        self._tried.add(lease.actor.config.name)
        self._last_failure = failure
        log.warning(
            "request %s: deployment %s failed (%s; upstream id %s); failing over",
            self.request_id,
            lease.actor.config.name,
            failure.message,
            self._ids.upstream_id if self._ids is not None else None,
        )

    # -- step 3: what the relay reports ---------------------------------------------------

    async def fail_over(self, failure: OmixaError) -> OpenedStream | None:
        """The stream of the next deployment that takes the request after ``failure``
        (which :meth:`may_fail_over` allowed), or None when none can: ``failure`` stands.
        The failed attempt's stream is already closed. Cancellation: propagates; the relay
        then ends the stream as usual."""
        await self._retire_attempt(failure)
        try:
            assert self._opener is not None
            opened = await self._attempt(self._opener)
        except OmixaError as exc:
            log.warning("request %s: stream failover found no deployment: %s", self.request_id, exc.message)
            return None
        self._service_tier = None  # the next deployment reports its own tier
        return opened

    def tier_reported(self, tier: str) -> None:
        """The answer says which service tier it was billed at (Azure may downgrade priority)."""
        self._service_tier = tier

    def answer_identified(self, answer_id: str) -> None:
        """The upstream stores the answer under ``answer_id`` (the Responses API)."""
        self._answer_id = answer_id

    def item_identified(self, item_id: str) -> None:
        """The stored answer has an output item ``item_id``."""
        self._answer_items.append(item_id)

    def content_started(self) -> None:
        """The first content is going out: the time to first token is now, and no other
        deployment may answer from here on, so the prompt is not needed again (a long stream
        then holds nothing of it)."""
        if self._first_token_at is None:
            self._first_token_at = time.monotonic()
            self._upstream_body = {}
            self._request = attrs.evolve(self._request, body={})  # type: ignore[misc]

    def cancelled_status(self) -> str:
        """Why a cancelled request ended: the client left, or the server was shutting down."""
        return "interrupted" if self._services.draining() else "client_closed"

    async def stream_ended(
        self,
        status: str,
        *,
        usage: Usage | None,
        delivered: str,
        charge: bool,
        failure: OmixaError | None,
        message: str | None = None,
    ) -> None:
        """The stream is over: settle and record. ``usage`` is what the upstream reported
        (None if it did not: then the ``delivered`` text is counted); ``charge`` False
        settles for nothing (an upstream failure before any content); ``failure`` is the
        upstream's error, for the deployment's health; ``message`` the error event's."""
        if not charge:
            usage = None
        elif usage is None:
            usage = self._delivered_usage(delivered)
        await self._finish(status, usage, failure, message)

    # -- step 4: settle and record --------------------------------------------------------

    def _delivered_usage(self, delivered_text: str) -> Usage:
        """What to charge when the upstream reported no usage."""
        if not self._reached_upstream:
            return Usage()
        return Usage(
            prompt_tokens=self._request.prompt_tokens,
            completion_tokens=count_text(delivered_text, self._request.model.encoding),
        )

    def _failing(self) -> Failing:
        return Failing(self)

    async def fail(self, exc: BaseException) -> None:
        """Finish a request that ended in ``exc`` before its answer or stream was handed out."""
        failure: OmixaError | None = None
        usage: Usage | None = None
        message: str | None = None
        if isinstance(exc, OmixaError):
            told = translate_upstream(exc)
            status, message = told.code, told.message
            if isinstance(exc, (UpstreamError, UpstreamTimeout)):
                failure = exc
        elif is_cancellation(exc):
            status, usage = self.cancelled_status(), self._delivered_usage("")
        else:
            log.exception("request %s failed", self.request_id, exc_info=exc)
            status, message = "internal_error", OmixaError.default_message
        await self._finish(status, usage, failure, message)

    async def _finish(
        self, status: str, usage: Usage | None, failure: OmixaError | None = None, message: str | None = None
    ) -> None:
        """Settle, give the slot back (with the upstream's ``failure``, if any, for its
        health) and record (with ``message``, the error the client was given, if any).
        Shielded and bounded; never raises."""
        if self._finished:
            return
        self._finished = True
        if self._trace is not None:
            self._trace.settling(status, usage, failure)
        services, request = self._services, self._request
        latency = time.monotonic() - self._started
        cost = request.cost(usage, self._service_tier) if usage is not None else 0
        charged = 0
        if self._admitted is not None:
            used = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
            services.limits.settle(self._caller.key_id, self._admitted, request.estimated_tokens, used)
        entry = self._log(status, usage or Usage(), latency, message)
        settle_wait: float | None = None
        with trio.move_on_after(FINISH_TIMEOUT, shield=True) as scope:
            if self._hold is not None:
                settle_started = time.monotonic()
                charged = await services.wallets.finalize(
                    self._caller.account_id, self._hold, cost, entry=entry, request_id=self.request_id
                )
                settle_wait = time.monotonic() - settle_started
            if self._lease is not None:
                await self._lease.finish(usage, status, latency, failure)
                if services.metrics is not None:
                    services.metrics.attempt_ended(request.model.id, self._lease.actor.config.name, status, failure)
                if self._answer_id is not None:
                    await self._remember(self._answer_id, self._lease, usage if status == "ok" else None)
        if scope.cancelled_caught:
            log.error("request %s: settling timed out; the hold expires later", self.request_id)
        entry = attrs.evolve(entry, cost=charged)
        services.usage.record(entry, self._hold.id if self._hold is not None else None)
        if services.metrics is not None:
            if self._relaying:
                services.metrics.open_streams.dec()
            attempts = len(self._tried) + (self._lease is not None)
            services.metrics.finished(request.api, entry, attempts, settle_wait)
        if self._trace is not None:
            self._trace.settled(entry, charged)

    async def _remember(self, answer_id: str, lease: Lease, usage: Usage | None) -> None:
        """Record where the upstream stores this answer, so a follow-up goes there. ``usage``:
        the finished answer's; None for one that did not finish here (the client left, the
        stream failed), which the upstream may still complete: it then counts as its whole
        output cap, so that a follow-up is held for at least what it carries."""
        request = self._request
        output = usage.completion_tokens if usage is not None else request.output_tokens
        prompt = usage.prompt_tokens if usage is not None else request.prompt_tokens
        await self._services.stored.record(
            StoredResponse(
                id=answer_id,
                account_id=self._caller.account_id,
                key_id=self._caller.key_id,
                model=request.model.id,
                deployment=lease.actor.config.name,
                endpoint=lease.actor.config.endpoint,
                context_tokens=prompt + output,
                output_tokens=output,
                created_at=self._created_at,
            ),
            self._answer_items,
            request_id=self.request_id,
        )

    def _log(self, status: str, usage: Usage, latency: float, message: str | None = None) -> RequestLog:
        lease, request, ttft = self._lease, self._request, self._first_token_at
        return RequestLog(
            id=self.request_id,
            account_id=self._caller.account_id,
            key_id=self._caller.key_id,
            model=request.model.id,
            provider=lease.actor.provider.name if lease else request.model.provider,
            deployment=lease.actor.config.name if lease else None,
            region=lease.actor.config.region if lease else None,
            status=status,
            stream=request.stream,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cached_tokens=usage.cached_tokens,
            cost=0,
            latency_ms=round(latency * 1000),
            ttft_ms=round((ttft - self._started) * 1000) if ttft is not None else None,
            created_at=self._created_at,
            upstream_request_id=self._ids.upstream_id if self._ids is not None else None,
            error_message=message[:ERROR_MESSAGE_MAX] if message else None,
        )
