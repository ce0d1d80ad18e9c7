"""Accounts and API keys: creation, authentication, revocation, wallet reads.

Keys are ``omx_live_`` followed by 43 urlsafe-base64 characters of ``secrets.token_bytes(32)``
(256 random bits). Only a SHA-256 hash and a short display prefix are stored; the key is
shown once, at creation. A plain hash suffices because the key has full entropy: there is
nothing to brute-force that a slow hash would protect. Lookups are by hash, so revocation
takes effect on the next request (no cache to expire).
"""

from __future__ import annotations

import hashlib
import secrets

import attrs

from engine.errors import InvalidApiKey, ServiceUnavailable
from storage import Account, ApiKeyRecord, Storage, StorageError, WalletState

KEY_PREFIX = "omx_live_"
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 6


@attrs.frozen(kw_only=True)
class NewKey:
    record: ApiKeyRecord
    secret: str  # the full key, shown once


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Accounts:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def create_account(self, email: str) -> Account:
        email = email.strip()
        if "@" not in email or len(email) > 320:
            raise ValueError(f"not an email address: {email!r}")
        return await self.storage.create_account(email)

    async def create_key(self, account_id: str, *, rpm: int | None = None, tpm: int | None = None) -> NewKey:
        """Errors: storage.NotFound if the account does not exist; ValueError for a
        negative limit. A limit of None uses the configured default, 0 means none."""
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 0:
                raise ValueError(f"--{name} must be >= 0 (0: unlimited)")
        secret = generate_key()
        record = await self.storage.create_api_key(
            account_id=account_id,
            key_hash=hash_key(secret),
            prefix=secret[:DISPLAY_PREFIX_CHARS],
            rpm=rpm,
            tpm=tpm,
        )
        return NewKey(record=record, secret=secret)

    async def authenticate(self, authorization: str | None) -> ApiKeyRecord:
        """The live key named by an ``Authorization: Bearer ...`` header.

        Errors: InvalidApiKey (missing, malformed, unknown or revoked — the message does not
        say which, beyond "missing"); ServiceUnavailable if the store cannot be reached.
        """
        if not authorization:
            raise InvalidApiKey("Missing API key. Send it as 'Authorization: Bearer omx_live_...'.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(KEY_PREFIX) or len(token) > 200:
            raise InvalidApiKey()
        try:
            record = await self.storage.find_api_key(hash_key(token))
        except StorageError as exc:
            raise ServiceUnavailable("The key store is unavailable; retry shortly.", retry_after=1.0) from exc
        if record is None or record.revoked_at is not None:
            raise InvalidApiKey()
        return record

    async def wallet(self, account_id: str) -> WalletState:
        try:
            wallet = await self.storage.get_wallet(account_id)
        except StorageError as exc:
            raise ServiceUnavailable("The wallet store is unavailable; retry shortly.", retry_after=1.0) from exc
        if wallet is None:
            raise InvalidApiKey()
        return wallet
