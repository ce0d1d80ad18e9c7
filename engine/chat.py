"""The engine's front for paid model calls: checking a chat or Responses body, and running any
checked call.

Chat completions, the Responses API, embeddings and image generations are all run by
:class:`engine.exchange.Exchange` (hold, route, call, relay, settle, record); this service
holds what every exchange uses (:class:`engine.exchange_context.Services`) and says whether shutdown
has begun.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from omixa.engine.catalog import Catalog
from omixa.engine.chat_request import ChatRequest, parse_chat_request
from omixa.engine.config import StreamingConfig, UpstreamConfig, WalletConfig
from omixa.engine.errors import InvalidRequest, NotFoundError
from omixa.engine.exchange import Exchange
from omixa.engine.exchange_context import Caller, Services
from omixa.engine.keylimits import KeyLimiter
from omixa.engine.metrics import Metrics
from omixa.engine.model_call import ModelCall
from omixa.engine.providers import check_request, check_responses_request
from omixa.engine.relay import StreamRelay
from omixa.engine.responses_request import RESPONSES_PROVIDERS, ResponsesRequest, parse_responses_request
from omixa.engine.router import Router
from omixa.engine.stored_responses import StoredResponses, not_found
from omixa.engine.usage import UsageAggregator
from omixa.engine.wallet import WalletPool

__all__ = ["ChatService"]


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
        stored: StoredResponses,
        metrics: Metrics | None = None,
    ) -> None:
        self._catalog = catalog
        self._router = router
        self._draining = False
        self._services = Services(
            router=router,
            wallets=wallets,
            usage=usage,
            limits=limits,
            stored=stored,
            wallet=wallet_config,
            streaming=streaming,
            upstream=upstream,
            draining=lambda: self._draining,
            metrics=metrics,
        )

    @property
    def draining(self) -> bool:
        """Whether shutdown has begun."""
        return self._draining

    def start_draining(self) -> None:
        """Shutdown has begun: requests cancelled from now on are ``interrupted``."""
        self._draining = True

    def parser(self) -> Callable[[Any], ChatRequest]:
        """A checker of chat request bodies against the deployments enabled now. It reads no
        actor state when called, so it may run in a worker thread (:mod:`engine.intake`).
        Its errors: InvalidRequest, ModelNotFound."""
        return partial(
            parse_chat_request,
            catalog=self._catalog,
            enabled=self._router.models(),
            priority_models=self._router.priority_models(),
            provider_check=check_request,
        )

    async def complete(self, caller: Caller, request: ModelCall) -> dict[str, Any]:
        """A non-streaming call, paid for: see :meth:`engine.exchange.Exchange.complete`."""
        return await Exchange(self._services, caller, request).complete()

    def responses_parser(self) -> Callable[[Any], ResponsesRequest]:
        """A checker of Responses API bodies (as :meth:`parser`). Errors: InvalidRequest,
        ModelNotFound."""
        return partial(
            parse_responses_request,
            catalog=self._catalog,
            enabled=self._router.models(),
            served=self._router.models_served_by(RESPONSES_PROVIDERS),
            priority_models=self._router.priority_models(),
            provider_check=check_responses_request,
        )

    async def respond(self, caller: Caller, request: ResponsesRequest) -> dict[str, Any]:
        """A non-streaming Responses API call, paid for (see :meth:`complete`).

        Errors: as :meth:`complete`, and NotFoundError / InvalidRequest for a
        ``previous_response_id`` that is unknown or cannot be continued here."""
        request = await self._continuing(caller, request)
        return await Exchange(self._services, caller, request).complete()

    async def open_response_stream(self, caller: Caller, request: ResponsesRequest) -> StreamRelay:
        """A streaming Responses API call's relay (see :meth:`open_stream`)."""
        request = await self._continuing(caller, request)
        frames = request.frames(self._services.streaming)
        return await Exchange(self._services, caller, request).open_stream(frames, request.open)

    async def _continuing(self, caller: Caller, request: ResponsesRequest) -> ResponsesRequest:
        """A request that names stored state (a ``previous_response_id``, items by reference)
        goes to the resource that stores it, with its context held; another account's
        response or item, or one never made here, is not found."""
        previous_id, references = request.previous_response_id, request.references
        if previous_id is None and not references:
            return request
        stored = self._services.stored
        previous = None
        if previous_id is not None:
            previous = await stored.find(caller.account_id, previous_id)
            if previous is None:
                raise not_found(previous_id, param="previous_response_id")
        found = await stored.find_items(caller.account_id, references)
        for item_id in references:
            if item_id not in found:
                raise NotFoundError(f"No item found with id '{item_id}'.", param="input")
        continued = request.continuing(previous, list({r.id: r for r in found.values()}.values()))
        model = request.model.id
        if not any(a.config.model == model and continued.allows(a.config) for a in self._router.deployments()):
            named = previous or next(iter(found.values()))
            raise InvalidRequest(
                f"The stored response '{named.id}' can only be continued with a model served where it is stored, "
                f"such as '{named.model}'.",
                param="previous_response_id" if previous is not None else "input",
            )
        return continued

    async def manage_response(self, caller: Caller, response_id: str, method: str, rest: str = "") -> dict[str, Any]:
        """Read, list the input items of, delete or cancel one of the caller's stored
        responses (see :meth:`engine.stored_responses.StoredResponses.manage`)."""
        stored = self._services.stored
        return await stored.manage(caller.account_id, response_id, method, rest, request_id=caller.request_id)

    async def open_stream(self, caller: Caller, request: ChatRequest) -> StreamRelay:
        """A streaming chat completion's relay: see :meth:`engine.exchange.Exchange.open_stream`."""
        frames = request.frames(self._services.streaming)
        return await Exchange(self._services, caller, request).open_stream(frames, request.open)
