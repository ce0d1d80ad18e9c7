"""Accounts and API keys: creation, authentication, revocation, wallet reads.

Keys are ``omx_live_`` followed by 43 urlsafe-base64 characters of ``secrets.token_bytes(32)``
(256 random bits). Only a SHA-256 hash and a short display prefix are stored; the key is
shown once, at creation. A plain hash suffices because the key has full entropy: there is
nothing to brute-force that a slow hash would protect.

Lookups are by hash, and a revocation takes effect on the next request in every process:
- every request is looked up in the database, except paid model calls (chat, embeddings,
  images) sent without a signature, which may use a live key's record this process looked
  up at most :data:`KEY_CACHE_SECONDS` ago (one storage round trip less on the hot path);
- such a call holds money before it reaches an upstream, and the hold itself checks, in its
  transaction, that the key is still live (:class:`storage.KeyRevoked`), so a revoked key
  is refused (401) with nothing held, charged or sent upstream. What the cache can change is
  only which error a revoked key sees first for a call that is invalid anyway (a bad body
  gets its 400 before the hold).
A key's limits and flags never change after creation; its signing secret does (rotation),
which is why signed requests are always looked up.

A key may also have a signing secret for request signatures (:mod:`engine.signatures`). It
is generated here, shown once beside the key, and stored only encrypted under
``OMIXA_SECRET_KEY`` (:mod:`engine.secretbox`); it travels with the key's row, so a rotation
too is seen by every process on its next request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Sequence

import attrs

from omixa.engine.errors import InvalidApiKey, NotFoundError, storage_failures
from omixa.engine.secretbox import SECRET_KEY_ENV, SecretBox, generate_signing_secret
from omixa.storage import Account, ApiKeyRecord, Storage, WalletState

KEY_PREFIX = "omx_live_"
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 6
# How long a live key's record may serve paid unsigned calls without a lookup, and how many
# keys this process keeps (least recently looked up go first).
KEY_CACHE_SECONDS = 2.0
KEY_CACHE_SIZE = 10_000


@attrs.frozen(kw_only=True)
class NewKey:
    record: ApiKeyRecord
    secret: str = attrs.field(repr=False)  # the full key, shown once
    # The signing secret, shown once; None when no server key (OMIXA_SECRET_KEY) is set.
    signing_secret: str | None = attrs.field(default=None, repr=False)


class SigningUnavailable(ValueError):
    """A signing secret was asked for, but no server key is set to encrypt it."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Accounts:
    def __init__(self, storage: Storage, box: SecretBox | None = None) -> None:
        self.storage = storage
        self.box = box  # encrypts signing secrets; None: keys get none
        # key hash -> (live record, monotonic time it was looked up)
        self._recent: dict[str, tuple[ApiKeyRecord, float]] = {}

    async def create_account(self, email: str) -> Account:
        email = email.strip()
        if "@" not in email or len(email) > 320:
            raise ValueError(f"not an email address: {email!r}")
        return await self.storage.create_account(email)

    async def keys(self, account_id: str) -> Sequence[ApiKeyRecord]:
        """The account's keys, revoked ones included, newest first. Errors: ServiceUnavailable."""
        with storage_failures("key"):
            return await self.storage.list_api_keys(account_id)

    async def last_used(self, account_id: str) -> dict[str, dt.datetime]:
        """Each of the account's used keys' last use: the time of its newest request log.

        Read from the request logs (no write per request on the hot path); a request shows
        here once the usage aggregator has written its log (``usage.flush_interval_seconds``).
        Errors: ServiceUnavailable (the usage store).
        """
        with storage_failures("usage"):
            return await self.storage.key_last_used(account_id)

    async def revoke_own_key(self, account_id: str, key_id: str) -> ApiKeyRecord:
        """Revoke one of the account's own keys (revoking twice keeps the first time); the
        key as it was before. Errors: NotFoundError for a key of another account or none;
        ServiceUnavailable."""
        with storage_failures("key"):
            owned = next((k for k in await self.storage.list_api_keys(account_id) if k.id == key_id), None)
            if owned is None:
                raise NotFoundError("No such key on this account.")
            await self.storage.revoke_api_key(key_id)
        self._recent = {h: seen for h, seen in self._recent.items() if seen[0].id != key_id}
        return owned

    async def create_key(
        self,
        account_id: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        signature_required: bool = False,
    ) -> NewKey:
        """A new key, with a signing secret when a server key is set.

        Errors: storage.NotFound if the account does not exist; ValueError for a negative
        limit; SigningUnavailable for ``signature_required`` without a server key.
        """
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 0:
                raise ValueError(f"--{name} must be >= 0 (0: unlimited)")
        if signature_required and self.box is None:
            raise SigningUnavailable(
                f"--require-signature needs {SECRET_KEY_ENV}, the server key that encrypts signing secrets"
            )
        secret = generate_key()
        signing = generate_signing_secret() if self.box is not None else None
        record = await self.storage.create_api_key(
            account_id=account_id,
            key_hash=hash_key(secret),
            prefix=secret[:DISPLAY_PREFIX_CHARS],
            rpm=rpm,
            tpm=tpm,
            signature_required=signature_required,
            signing_secret_enc=None if signing is None or self.box is None else self.box.encrypt(signing),
        )
        return NewKey(record=record, secret=secret, signing_secret=signing)

    async def rotate_signing_secret(self, key_id: str, *, grace_seconds: float) -> str:
        """Give the key a new signing secret and return it (shown once). The one it replaces
        keeps verifying for ``grace_seconds`` (0: not at all).

        Errors: SigningUnavailable without a server key; storage.NotFound for an unknown key;
        ValueError for a negative grace.
        """
        if self.box is None:
            raise SigningUnavailable(
                f"rotating a signing secret needs {SECRET_KEY_ENV}, the server key that encrypts it"
            )
        if grace_seconds < 0:
            raise ValueError("--grace-seconds must be >= 0")
        signing = generate_signing_secret()
        expires = None
        if grace_seconds > 0:
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=grace_seconds)
        await self.storage.rotate_signing_secret(key_id, self.box.encrypt(signing), previous_expires_at=expires)
        return signing

    async def authenticate(self, authorization: str | None, *, recent: bool = False) -> ApiKeyRecord:
        """The live key named by an ``Authorization: Bearer ...`` header.

        ``recent``: a record of this live key looked up at most :data:`KEY_CACHE_SECONDS`
        ago will do (only for calls whose hold re-checks the key; see the module's notes).

        Errors: InvalidApiKey (missing, malformed, unknown or revoked — the message does not
        say which, beyond "missing"); ServiceUnavailable if the store cannot be reached.
        """
        if not authorization:
            raise InvalidApiKey("Missing API key. Send it as 'Authorization: Bearer omx_live_...'.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(KEY_PREFIX) or len(token) > 200:
            raise InvalidApiKey()
        key_hash = hash_key(token)
        now = time.monotonic()
        if recent:
            seen = self._recent.get(key_hash)
            if seen is not None and now - seen[1] <= KEY_CACHE_SECONDS:
                return seen[0]
        with storage_failures("key"):
            record = await self.storage.find_api_key(key_hash)
        if record is None or record.revoked_at is not None:
            self._recent.pop(key_hash, None)
            raise InvalidApiKey()
        self._recent.pop(key_hash, None)  # re-insert: the dict's order is lookup order
        self._recent[key_hash] = (record, now)
        if len(self._recent) > KEY_CACHE_SIZE:
            del self._recent[next(iter(self._recent))]
        return record

    # -- dashboard sessions ---------------------------------------------------------------
    async def start_session(self, key: ApiKeyRecord, seconds: float) -> str:
        """Record a dashboard sign-in of ``key`` lasting ``seconds``; return the session id.

        Errors: ServiceUnavailable (the key store).
        """
        session_id = secrets.token_urlsafe(24)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        with storage_failures("key"):
            await self.storage.create_dashboard_session(session_id, key.id, expires)
        return session_id

    async def session_key(self, session_id: str) -> ApiKeyRecord | None:
        """The live key of a session that was not ended and has not expired, else None.

        Errors: ServiceUnavailable (the key store).
        """
        with storage_failures("key"):
            record = await self.storage.dashboard_session_key(session_id)
        return None if record is None or record.revoked_at is not None else record

    async def end_session(self, session_id: str) -> None:
        """Sign out: the session's cookie stops working in every process.

        Errors: ServiceUnavailable (the key store).
        """
        with storage_failures("key"):
            await self.storage.end_dashboard_session(session_id)

    async def wallet(self, account_id: str) -> WalletState:
        with storage_failures("wallet"):
            wallet = await self.storage.get_wallet(account_id)
        if wallet is None:
            raise InvalidApiKey()
        return wallet
