"""Taking a model call in: the cheap checks first, then the body, with its heavy work off
the event loop.

Every model call (chat completions, embeddings, images, the playground) goes through
:class:`Intake` in this order, so that no key can make the gateway work for a request that
its limits or its wallet would refuse anyway:

1. :meth:`Intake.admit`: the call counts against the key's requests per minute before its
   body is read, refused or not later (a 400, a 402 and a 404 each count); over the limit
   it gets 429 ``rate_limited`` at once.
2. :meth:`Intake.check`: the body (already bounded by ``server.max_body_bytes``) is decoded
   and checked. A body of more than :data:`LARGE_BODY_BYTES` is taken further only when the
   account has money available (else 402 ``insufficient_balance``, one indexed read), and
   its JSON decoding and token counting run in a worker thread (at most
   :data:`LARGE_BODY_THREADS` at once): token counting does not hold the GIL
   (:func:`engine.tokens.count_text`), so other requests keep being served meanwhile.
   Small bodies, nearly every request, are checked on the loop, where that costs less than
   a thread hop.

The key's tokens per minute are counted later, once the request's estimate is known
(:mod:`engine.chat`).
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

import trio

from engine.accounts import Accounts
from engine.errors import InsufficientBalance, InvalidRequest
from engine.keylimits import KeyLimiter
from storage import ApiKeyRecord

T = TypeVar("T")

# Bodies above this are checked in a worker thread, after a look at the wallet. Counting the
# tokens of 64 KiB of text takes about 1.5 ms; of the largest default body (4 MiB) 60-100 ms.
LARGE_BODY_THREADS = 2
LARGE_BODY_BYTES = 64 * 1024


def decode_json(raw: bytes) -> Any:
    """The request's JSON document. Errors: InvalidRequest (empty, not JSON, too deeply
    nested for the decoder)."""
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None


class Intake:
    def __init__(self, limits: KeyLimiter, accounts: Accounts) -> None:
        self._limits = limits
        self._accounts = accounts
        self._threads = trio.CapacityLimiter(LARGE_BODY_THREADS)

    def admit(self, key: ApiKeyRecord) -> None:
        """Count one model call against the key's requests per minute.

        Errors: RateLimited (with ``retry_after``).
        """
        self._limits.admit_request(key, trio.current_time())

    async def check(self, key: ApiKeyRecord, raw: bytes, parse: Callable[[Any], T]) -> T:
        """``parse(decode_json(raw))``; for a large body, only if the account has money
        available, and in a worker thread.

        ``parse`` must be safe to run in a thread: it may read only immutable state (pass it
        what it needs from actors, read on the loop beforehand).

        Errors: InvalidRequest, InsufficientBalance, ServiceUnavailable (the wallet store),
        and whatever ``parse`` raises.
        Cancellation: a thread already running finishes on its own; its result is dropped.
        """
        if len(raw) <= LARGE_BODY_BYTES:
            return parse(decode_json(raw))
        wallet = await self._accounts.wallet(key.account_id)
        if wallet.available <= 0:
            raise InsufficientBalance()
        return await trio.to_thread.run_sync(
            lambda: parse(decode_json(raw)), limiter=self._threads, abandon_on_cancel=True
        )
