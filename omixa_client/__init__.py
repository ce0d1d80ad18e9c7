"""Signing requests to Omixa: the one definition of the signed string, and an ``httpx.Auth``.

A signed request carries three headers::

    X-Omixa-Timestamp: 1780660800                  Unix time, whole seconds
    X-Omixa-Nonce: 3q2-7wX1...                     optional; 1-64 of A-Z a-z 0-9 _ -
    X-Omixa-Signature: sha256=<64 lowercase hex>   HMAC-SHA256 with the key's signing secret

over the bytes ``{timestamp}.{METHOD}.{path}.{raw_body}``, or, with a nonce,
``{timestamp}.{nonce}.{METHOD}.{path}.{raw_body}``. ``path`` is the request target as sent,
starting ``/api/v1``, with its query string (a ``?`` with nothing after it is not part of
it); ``raw_body`` is the exact body bytes (empty for a GET). The HMAC key is the signing
secret's text (``omx_sig_...``) as UTF-8 bytes.

Use with the official ``openai`` SDK::

    import httpx, openai
    from omixa_client import OmixaSigner
    client = openai.OpenAI(base_url=..., api_key=OMIXA_API_KEY,
                           http_client=httpx.Client(auth=OmixaSigner(OMIXA_SIGNING_SECRET)))

This module depends on nothing but the standard library and httpx; the gateway verifies with
the same :func:`signed_message`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Generator

import httpx

__all__ = [
    "NONCE_HEADER",
    "OmixaSigner",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "sign",
    "signature_headers",
    "signed_message",
]

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


def request_target(url: httpx.URL) -> bytes:
    """The path and query as sent on the wire, without a lone trailing ``?``."""
    raw = url.raw_path
    return raw[:-1] if raw.endswith(b"?") else raw


class OmixaSigner(httpx.Auth):
    """Signs every request with a key's signing secret, always with a fresh nonce, so a
    retry or two identical polls in the same second are never taken for a replay.

    Works with ``httpx.Client`` and ``httpx.AsyncClient`` alike. It does not set
    ``Authorization``: the API key is sent as usual (the ``openai`` SDK does it).
    """

    requires_request_body = True

    def __init__(self, signing_secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = signing_secret
        self._clock = clock

    def __repr__(self) -> str:  # never show the secret
        return "OmixaSigner(<secret>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(
            signature_headers(
                self._secret,
                request.method,
                request_target(request.url),
                request.content,
                timestamp=int(self._clock()),
            )
        )
        yield request
