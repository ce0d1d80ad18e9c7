"""Signing requests to Omixa: the one definition of the signed string, and ``OmixaSigner``.

A signed request carries three headers::

    X-Omixa-Timestamp: 1780660800                  Unix time, whole seconds
    X-Omixa-Nonce: 3q2-7wX1...                     optional; 1-64 of A-Z a-z 0-9 _ -
    X-Omixa-Signature: sha256=<64 lowercase hex>   HMAC-SHA256 with the key's signing secret

over the bytes ``{timestamp}.{METHOD}.{path}.{raw_body}``, or, with a nonce,
``{timestamp}.{nonce}.{METHOD}.{path}.{raw_body}``. ``path`` is the request target as sent,
starting ``/api/v1``, with its query string (a ``?`` with nothing after it is not part of
it); ``raw_body`` is the exact body bytes (empty for a GET). The HMAC key is the signing
secret's text (``omx_sig_...``) as UTF-8 bytes.

Use with the official ``openai`` SDK (3.x runs on httpx2; its ``DefaultHttpxClient`` is an
``httpx2.Client`` with the SDK's own timeouts and limits)::

    import openai
    from omixa_client import OmixaSigner
    client = openai.OpenAI(base_url=..., api_key=OMIXA_API_KEY,
                           http_client=openai.DefaultHttpxClient(auth=OmixaSigner(OMIXA_SIGNING_SECRET)))

``AsyncOpenAI`` takes ``openai.DefaultAsyncHttpxClient(auth=...)`` the same way, and
``OmixaSigner`` is ``auth=`` for plain ``httpx`` and ``httpx2`` clients too. The signed
string needs only the standard library; the gateway verifies with the same
:func:`signed_message`.
"""

from omixa_client._message import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_PREFIX,
    TIMESTAMP_HEADER,
    new_nonce,
    request_target,
    sign,
    signature_headers,
    signed_message,
)
from omixa_client._signer import OmixaSigner

__all__ = [
    "NONCE_HEADER",
    "OmixaSigner",
    "SIGNATURE_HEADER",
    "SIGNATURE_PREFIX",
    "TIMESTAMP_HEADER",
    "new_nonce",
    "request_target",
    "sign",
    "signature_headers",
    "signed_message",
]
