"""The signed string and the signature headers: the one definition, standard library only."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

TIMESTAMP_HEADER = "X-Omixa-Timestamp"
NONCE_HEADER = "X-Omixa-Nonce"
SIGNATURE_HEADER = "X-Omixa-Signature"
SIGNATURE_PREFIX = "sha256="


def signed_message(
    timestamp: int | str, method: str, path: bytes | str, body: bytes, nonce: str | None = None
) -> bytes:
    """The exact bytes that are signed.

    Args:
        timestamp: Unix seconds, as sent in ``X-Omixa-Timestamp``.
        method: The HTTP method as sent (``POST``).
        path: The target from ``/api/v1``, with the query string if there is one.
        body: The raw body bytes.
        nonce: The ``X-Omixa-Nonce`` value, if one is sent.
    """
    if isinstance(path, str):
        path = path.encode("ascii")
    head = f"{timestamp}." + (f"{nonce}." if nonce is not None else "") + f"{method}."
    return head.encode("ascii") + path + b"." + body


def sign(secret: str, message: bytes) -> str:
    """``sha256=`` and the lowercase hex HMAC-SHA256 of ``message`` under ``secret``."""
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def new_nonce() -> str:
    """24 URL-safe characters (144 random bits)."""
    return secrets.token_urlsafe(18)


def signature_headers(
    secret: str,
    method: str,
    path: bytes | str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign one request (with a fresh nonce unless one is given)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = new_nonce() if nonce is None else nonce
    return {
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, signed_message(timestamp, method, path, body, nonce)),
    }


def request_target(raw_path: bytes) -> bytes:
    """The path and query as sent on the wire (``URL.raw_path``), without a lone trailing ``?``."""
    return raw_path[:-1] if raw_path.endswith(b"?") else raw_path
