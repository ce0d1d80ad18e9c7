"""Signing secrets at rest: generated here, stored only encrypted under ``OMIXA_SECRET_KEY``.

The gateway needs each key's signing secret in recoverable form (it computes the HMAC
itself), so unlike API keys they cannot be hash-only. They are encrypted with Fernet from the
``cryptography`` package: AES-128-CBC plus HMAC-SHA256, authenticated, with a random IV per
token. ``OMIXA_SECRET_KEY`` holds one Fernet key (32 bytes, URL-safe base64, as
``Fernet.generate_key()`` prints), or several separated by commas to change the server key:
the first encrypts, every one decrypts (``MultiFernet``).

The server key is read from the environment only, never from the config file, and is not
kept on any object that has a readable ``repr``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

SECRET_KEY_ENV = "OMIXA_SECRET_KEY"
SIGNING_SECRET_PREFIX = "omx_sig_"


class SecretKeyError(ValueError):
    """``OMIXA_SECRET_KEY`` is malformed, or does not decrypt a stored secret."""


def generate_signing_secret() -> str:
    """``omx_sig_`` + 43 URL-safe characters (256 random bits)."""
    return SIGNING_SECRET_PREFIX + secrets.token_urlsafe(32)


class SecretBox:
    """Encrypts and decrypts signing secrets with the server key(s)."""

    __slots__ = ("_fernet",)

    def __init__(self, keys: list[bytes]) -> None:
        """Errors: SecretKeyError if a key is not a Fernet key."""
        # cryptography is imported here, not at start-up: about 7 MB of memory that a
        # gateway without signing secrets need not carry.
        from cryptography.fernet import Fernet, MultiFernet

        if not keys:
            raise SecretKeyError(f"{SECRET_KEY_ENV}: no key given")
        fernets = []
        for i, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                which = "" if len(keys) == 1 else f" (key {i + 1} of {len(keys)})"
                raise SecretKeyError(
                    f"{SECRET_KEY_ENV}{which}: not a Fernet key; expected 32 bytes in URL-safe "
                    "base64, as `python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'` prints"
                ) from None
        self._fernet = MultiFernet(fernets)

    def __repr__(self) -> str:
        return "SecretBox(<keys>)"

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """Errors: SecretKeyError if no server key decrypts ``token`` (wrong key, or tampered)."""
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(
                f"{SECRET_KEY_ENV} does not decrypt a stored signing secret: is it the key the "
                "secrets were created with?"
            ) from None


def secret_box_from_env(environ: Mapping[str, str] = os.environ) -> SecretBox | None:
    """The box for ``OMIXA_SECRET_KEY``, or None when it is unset or blank.

    Errors: SecretKeyError if it is set but malformed.
    """
    text = (environ.get(SECRET_KEY_ENV) or "").strip()
    if not text:
        return None
    return SecretBox([part.strip().encode("ascii", "replace") for part in text.split(",") if part.strip()])
