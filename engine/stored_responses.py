"""Where each stored response lives, and whose it is (the Responses API's ``store``).

Azure keeps a response on the resource that made it; only that resource can continue it
(``previous_response_id``) or return it. :class:`StoredResponses` remembers, in the database
(so it survives restarts and serves every process), which account made each response, with
which deployment on which resource, and how many tokens it adds to a follow-up's context.
An id another account made is unknown here: the caller answers "not found".
"""

from __future__ import annotations

from omixa.engine.errors import storage_failures
from omixa.storage import Storage, StoredResponse


class StoredResponses:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def remember(self, response: StoredResponse) -> None:
        """Errors: ServiceUnavailable (the store cannot be reached)."""
        with storage_failures("response"):
            await self._storage.save_stored_response(response)

    async def find(self, account_id: str, response_id: str) -> StoredResponse | None:
        """The account's response ``response_id``, or None.

        Errors: ServiceUnavailable."""
        with storage_failures("response"):
            return await self._storage.find_stored_response(account_id, response_id)

    async def forget(self, account_id: str, response_id: str) -> bool:
        """Errors: ServiceUnavailable."""
        with storage_failures("response"):
            return await self._storage.delete_stored_response(account_id, response_id)
