"""Taking a model call in: the cheap checks first, then the body, with its heavy work off
the event loop.

Every model call (chat completions, embeddings, images, the playground) goes through
:meth:`Intake.take`, in this order, so that no key can make the gateway work for a request
that its limits or its wallet would refuse anyway:

1. the call counts against the key's requests per minute before its body is read, refused
   or not later (a 400, a 402 and a 404 each count); over the limit it gets 429
   ``rate_limited`` at once;
2. a body of more than :data:`LARGE_BODY_BYTES` (declared by ``Content-Length``, or found so
   once read) is taken further only when the account has money available (else 402
   ``insufficient_balance``, one indexed read), before it is read when its length is
   declared;
3. the body (bounded by ``server.max_body_bytes`` where it is read) is decoded and checked.
   A large body's JSON decoding and token counting run in a worker thread (at most
   :data:`LARGE_BODY_THREADS` at once): token counting does not hold the GIL
   (:func:`engine.tokens.count_text`), so other requests keep being served meanwhile. Small
   bodies, nearly every request, are checked on the loop, where that costs less than a
   thread hop.

The key's tokens per minute are counted later, once the request's estimate is known
(:mod:`engine.exchange`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from omixa.engine.accounts import Accounts
from omixa.engine.errors import InsufficientBalance, InvalidRequest
from omixa.engine.keylimits import KeyLimiter
from omixa.engine.upstream import refuse_json_constant
from omixa.storage import ApiKeyRecord

T = TypeVar("T")

# Bodies above this are checked in a worker thread, after a look at the wallet. Counting the
# tokens of 64 KiB of text takes about 1.5 ms; of the largest default body (4 MiB) 60-100 ms.
LARGE_BODY_THREADS = 2
LARGE_BODY_BYTES = 64 * 1024


def _number(text: str) -> int | float:
    """A JSON number with a fraction or an exponent. A whole one (``2.0``, ``1e3``) is the
    integer it equals, as JSON Schema counts it: an integer field takes it, and it goes
    upstream as that integer. One too large for a float is refused (it would go upstream as
    ``Infinity``, which is not JSON)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return int(value) if value.is_integer() else value


# One decoder for every request: json.loads with hooks would build a decoder per call.
_decode = json.JSONDecoder(parse_constant=refuse_json_constant, parse_float=_number).decode


def decode_json(raw: bytes) -> Any:
    """The request's JSON document. Errors: InvalidRequest (empty, not JSON, NaN or Infinity,
    a number out of range, too deeply nested for the decoder)."""
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        # Bytes to text as json.loads does (UTF-8, or UTF-16/32 told by the first bytes).
        return _decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None


class Intake:
    def __init__(self, limits: KeyLimiter, accounts: Accounts) -> None:
        self._limits = limits
        self._accounts = accounts
        self._threads = trio.CapacityLimiter(LARGE_BODY_THREADS)

    async def count(self, key: ApiKeyRecord) -> None:
        """Admit one call of ``key`` that has no body to check (a stored response's lookup):
        it counts against the key's requests per minute like a model call.

        Errors: RateLimited, ServiceUnavailable."""
        await self._limits.start_request(key, trio.current_time()).check()

    async def take(
        self,
        key: ApiKeyRecord,
        declared_bytes: int | None,
        read_body: Callable[[], Awaitable[bytes]],
        parse: Callable[[Any], T],
    ) -> T:
        """Admit one model call of ``key`` and return ``parse(decode_json(body))``.

        Args:
            declared_bytes: the request's ``Content-Length``, if it has one.
            read_body: reads the raw body (within the size limit).
            parse: checks the decoded body. It must be safe to run in a thread: it may read
                only immutable state (pass it what it needs from actors, read beforehand).

        The key's requests per minute count first (a refusal wins over whatever the body
        would have earned); with shared limits the body is read and parsed while Redis
        decides.

        Errors: RateLimited, InsufficientBalance, ServiceUnavailable (the wallet store),
        RequestTooLarge and InvalidRequest (the body), and whatever ``parse`` raises.
        Cancellation: a thread already running finishes on its own; its result is dropped.
        """
        verdict = self._limits.start_request(key, trio.current_time())
        try:
            looked = declared_bytes is not None and declared_bytes > LARGE_BODY_BYTES
            if looked:
                await self._require_money(key)
            raw = await read_body()
            if len(raw) <= LARGE_BODY_BYTES:
                taken = parse(decode_json(raw))
            else:
                if not looked:
                    await self._require_money(key)
                taken = await trio.to_thread.run_sync(
                    lambda: parse(decode_json(raw)), limiter=self._threads, abandon_on_cancel=True
                )
        except Exception:
            await verdict.check()  # a refusal by the key's limit comes first
            raise
        await verdict.check()
        return taken

    async def _require_money(self, key: ApiKeyRecord) -> None:
        """Errors: InsufficientBalance when nothing is available; ServiceUnavailable."""
        wallet = await self._accounts.wallet(key.account_id)
        if wallet.available <= 0:
            raise InsufficientBalance()
