"""Where each stored response lives, and whose it is (the Responses API's ``store``).

Azure keeps a response on the resource that made it; only that resource can continue it
(``previous_response_id``) or return it. :class:`StoredResponses` remembers, in the database
(so it survives restarts and serves every process), which account made each response, with
which deployment on which resource, and how many tokens it adds to a follow-up's context.
An id another account made is unknown here: the caller answers "not found".

Reading, listing the input items of, deleting and cancelling a stored response
(:meth:`StoredResponses.manage`) go straight to a deployment's adapter on that resource, the
one that made it while it is configured: they are not model calls (nothing is generated,
held or charged), so they take no slot of the deployment's windows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import quote

from omixa.engine.errors import (
    NotFoundError,
    ServiceUnavailable,
    UpstreamError,
    storage_failures,
    translate_upstream,
)
from omixa.engine.router import Router
from omixa.engine.upstream import CallIds, StoringProvider
from omixa.storage import Storage, StoredResponse

log = logging.getLogger("omixa.responses")


def same_resource(endpoint: str, other: str) -> bool:
    """Whether two configured endpoints name the same Azure resource."""
    return endpoint.rstrip("/").lower() == other.rstrip("/").lower()


def not_found(response_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"No response found with id '{response_id}'.", param=param)


class StoredResponses:
    def __init__(self, storage: Storage, router: Router) -> None:
        self._storage = storage
        self._router = router

    async def remember(self, response: StoredResponse, item_ids: Sequence[str] = ()) -> None:
        """Record ``response`` and the ids of its output items.

        Errors: ServiceUnavailable (the store cannot be reached)."""
        with storage_failures("response"):
            await self._storage.save_stored_response(response, item_ids)

    async def record(self, response: StoredResponse, item_ids: Sequence[str], *, request_id: str) -> None:
        """:meth:`remember`, at the end of the request ``request_id``: a store that cannot be
        reached is logged (the response's id is then unknown here), never raised."""
        try:
            await self.remember(response, item_ids)
        except ServiceUnavailable:
            log.error("request %s: could not record where response %s lives", request_id, response.id)

    async def find_items(self, account_id: str, item_ids: Sequence[str]) -> dict[str, StoredResponse]:
        """The account's stored response of each of ``item_ids`` (unknown ones left out).

        Errors: ServiceUnavailable."""
        with storage_failures("response"):
            return await self._storage.find_stored_items(account_id, item_ids)

    async def find(self, account_id: str, response_id: str) -> StoredResponse | None:
        """The account's response ``response_id``, or None.

        Errors: ServiceUnavailable."""
        with storage_failures("response"):
            return await self._storage.find_stored_response(account_id, response_id)

    async def manage(
        self, account_id: str, response_id: str, method: str, rest: str = "", *, request_id: str | None = None
    ) -> dict:
        """``method`` on the account's stored response (``rest``: what follows its id in the
        path, e.g. ``/input_items?limit=20`` or ``/cancel``), at the resource that holds it,
        sent upstream as ``request_id`` (:class:`~engine.upstream.CallIds`).
        A DELETE that succeeds, or an upstream that no longer holds the response, forgets it.

        Errors: NotFoundError (not the account's, or gone upstream), the upstream's refusal
        (:func:`engine.errors.translate_upstream`: a 400 keeps its reason), UpstreamError,
        UpstreamTimeout, ServiceUnavailable.
        """
        stored = await self.find(account_id, response_id)
        if stored is None:
            raise not_found(response_id)
        provider = self._provider(stored)
        if provider is None:
            raise NotFoundError(f"The response '{response_id}' is stored on a resource this server no longer serves.")
        try:
            ids = CallIds(request_id) if request_id is not None else None
            answer = await provider.manage_response(method, f"/{quote(response_id, safe='')}{rest}", ids)
        except UpstreamError as exc:
            if exc.upstream_status != 404:
                raise translate_upstream(exc) from None  # as any call's: the client's fault kept, the rest plain
            await self._forget(account_id, response_id)
            raise not_found(response_id) from None
        if method == "DELETE":
            await self._forget(account_id, response_id)
        return answer

    def _provider(self, stored: StoredResponse) -> StoringProvider | None:
        """The adapter of the deployment that made the response, else of any enabled one on
        its resource."""
        on_resource = [
            actor
            for actor in self._router.deployments()
            if actor.config.enabled
            and isinstance(actor.provider, StoringProvider)
            and same_resource(actor.config.endpoint, stored.endpoint)
        ]
        on_resource.sort(key=lambda actor: actor.config.name != stored.deployment)
        provider = on_resource[0].provider if on_resource else None
        return provider if isinstance(provider, StoringProvider) else None

    async def _forget(self, account_id: str, response_id: str) -> None:
        with storage_failures("response"):
            await self._storage.delete_stored_response(account_id, response_id)
