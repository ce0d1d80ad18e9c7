"""Who is calling: an API request's key, authenticated and, where required, its signature verified.

One call, :meth:`Access.authenticate`, for every ``/api/v1`` route:

1. the bearer key is authenticated (:meth:`engine.accounts.Accounts.authenticate`): looked
   up by hash in the database, so a revocation or a secret rotation is seen on the next
   request by every process. The one exception is an unsigned paid model call, which may
   use this process's record of the key from the last
   :data:`engine.accounts.KEY_CACHE_SECONDS`: its hold re-checks in the database that the
   key is live before anything is held or sent upstream;
2. when the request must be signed (:meth:`engine.signatures.SignatureVerifier.applies`),
   the exact body is asked for (the caller reads it, within its size limit) and the
   signature verified (:mod:`engine.signatures`).

The dashboard's sessions stand in for a key (:meth:`Access.sign_in`,
:meth:`Access.session_key`), so a key that must sign its requests cannot open one: a browser
cannot sign with the key's secret, and a session would let the key alone spend money that
signatures are required for.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import attrs

from omixa.engine.accounts import Accounts
from omixa.engine.errors import InvalidApiKey
from omixa.engine.signatures import SignatureVerifier
from omixa.storage import ApiKeyRecord


class SigningKeyRefused(InvalidApiKey):
    default_message = (
        "This key must sign every request, which a browser session cannot do; "
        "use a key without the signature requirement for the dashboard."
    )


@attrs.frozen(kw_only=True)
class RequestHead:
    """What authenticating an HTTP request reads from it (headers as received).

    ``target``: the path as received (still percent-encoded), plus ``?query`` when there is
    one. ``paid``: a model call, whose hold re-checks that the key is live.
    """

    authorization: str | None
    timestamp: str | None
    nonce: str | None
    signature: str | None
    method: str
    target: bytes
    paid: bool


class Access:
    def __init__(self, accounts: Accounts, verifier: SignatureVerifier) -> None:
        self._accounts = accounts
        self._verifier = verifier

    async def authenticate(self, head: RequestHead, read_body: Callable[[], Awaitable[bytes]]) -> ApiKeyRecord:
        """The live key the request came with, its signature verified when one is required
        or sent. ``read_body`` is awaited only then, for the exact body bytes.

        Errors: InvalidApiKey, the signature errors of :mod:`engine.signatures` (401),
        ServiceUnavailable; whatever ``read_body`` raises (e.g. RequestTooLarge).
        """
        signed = head.signature is not None
        key = await self._accounts.authenticate(head.authorization, recent=head.paid and not signed)
        if self._verifier.applies(key, signed):
            claim = self._verifier.verify(
                key,
                timestamp=head.timestamp,
                nonce=head.nonce,
                signature=head.signature,
                method=head.method,
                target=head.target,
                body=await read_body(),
                now=time.time(),
            )
            await self._verifier.claim(claim)
        return key

    async def sign_in(self, api_key: str) -> ApiKeyRecord:
        """The live key a dashboard session may be opened with.

        Errors: InvalidApiKey; SigningKeyRefused (one) for a key that must sign its requests;
        ServiceUnavailable.
        """
        key = await self._accounts.authenticate(f"Bearer {api_key.strip()}")
        if self._verifier.applies(key, False):
            raise SigningKeyRefused()
        return key

    async def session_key(self, session_id: str) -> ApiKeyRecord | None:
        """The live key of a dashboard session, or None (no such session, expired, its key
        revoked, or its key must now sign). Errors: ServiceUnavailable."""
        key = await self._accounts.session_key(session_id)
        if key is None or self._verifier.applies(key, False):
            return None
        return key
