"""Every error a client can see, in one tree with one mapping to HTTP.

OmixaError                      code                    status
 +-- InvalidRequest             invalid_request         400
 +-- InvalidApiKey              invalid_api_key         401
 +-- MissingSignature           missing_signature       401
 +-- InvalidSignature           invalid_signature       401
 +-- StaleTimestamp             stale_timestamp         401
 +-- ReplayedRequest            replayed_request        401
 +-- InsufficientBalance        insufficient_balance    402
 +-- TopUpDisabled              top_up_disabled         403
 +-- ModelNotFound              model_not_found         404
 +-- NotFoundError              not_found               404
 +-- MethodNotAllowed           method_not_allowed      405
 +-- IdempotencyKeyReused       idempotency_key_reused  409
 +-- RequestTooLarge            request_too_large       413
 +-- RateLimited                rate_limited            429 (+ Retry-After)
 +-- InternalError              internal_error          500
 +-- UpstreamError              upstream_error          502
 +-- NoHealthyDeployment        no_healthy_deployment   503 (+ Retry-After)
 +-- ServiceUnavailable         service_unavailable     503
 +-- UpstreamTimeout            upstream_timeout        504
      +-- UpstreamBusy          no_healthy_deployment   503 (+ Retry-After)

The web layer renders any of these as ``{"error": {"code", "message", "type", "request_id"}}``
with the status above; anything else becomes ``internal_error`` without leaking details.
Provider adapters raise :class:`UpstreamError` / :class:`UpstreamTimeout` (translating httpx's
exceptions at their one seam); storage errors are translated by the engine. What a client
sees of an upstream failure is :func:`translate_upstream`'s.

A message never carries an Omixa key or signing secret, even one the client put in its own
request (a key pasted as the model name): anything shaped like one is redacted when the
error is made, so neither the response nor a log of the error can show it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from omixa.storage import StorageError

# omx_live_ (API keys) and omx_sig_ (signing secrets), followed by their random part.
_SECRET_SHAPED = re.compile(r"omx_(live|sig)_[A-Za-z0-9_-]+")


def redact_secrets(text: str) -> str:
    """``text`` with every key- or secret-shaped token replaced by its prefix and ``[redacted]``."""
    return _SECRET_SHAPED.sub(lambda m: f"omx_{m[1]}_[redacted]", text)


class OmixaError(Exception):
    code = "internal_error"
    status = 500
    type = "server_error"
    default_message = "Internal processing failure."

    def __init__(
        self, message: str | None = None, *, retry_after: float | None = None, param: str | None = None
    ) -> None:
        self.message = redact_secrets(message) if message else self.default_message
        self.retry_after = retry_after
        self.param = param  # the request field at fault, when one is
        super().__init__(self.message)

    def envelope(self, request_id: str) -> dict[str, Any]:
        """The OpenAI-shaped error body: ``{"error": {"code", "message", "type", "request_id"}}``
        (an HTTP error response's body, and a stream's error event's data)."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "request_id": request_id,
            }
        }


class InvalidRequest(OmixaError):
    code, status, type = "invalid_request", 400, "invalid_request_error"
    default_message = "The request is not valid."


class InvalidApiKey(OmixaError):
    code, status, type = "invalid_api_key", 401, "authentication_error"
    default_message = "Missing or invalid API key. Send it as 'Authorization: Bearer omx_live_...'."


class MissingSignature(OmixaError):
    code, status, type = "missing_signature", 401, "authentication_error"
    default_message = (
        "This request must be signed: send X-Omixa-Timestamp and X-Omixa-Signature "
        "(sha256=HMAC of timestamp.METHOD.path.body with your signing secret)."
    )


class InvalidSignature(OmixaError):
    code, status, type = "invalid_signature", 401, "authentication_error"
    default_message = "The request signature does not match."


class StaleTimestamp(OmixaError):
    code, status, type = "stale_timestamp", 401, "authentication_error"
    default_message = "X-Omixa-Timestamp is too far from the server's clock."


class ReplayedRequest(OmixaError):
    code, status, type = "replayed_request", 401, "authentication_error"
    default_message = "This signature was already used. Sign every request afresh, with a new X-Omixa-Nonce."


class InsufficientBalance(OmixaError):
    code, status, type = "insufficient_balance", 402, "billing_error"
    default_message = "Wallet balance is not enough for this request."


class TopUpDisabled(OmixaError):
    code, status, type = "top_up_disabled", 403, "permission_error"
    default_message = "Self-service top-up is disabled on this server; ask the operator to top up your wallet."


class ModelNotFound(OmixaError):
    code, status, type = "model_not_found", 404, "invalid_request_error"
    default_message = "The model does not exist or is not enabled."


class NotFoundError(OmixaError):
    code, status, type = "not_found", 404, "invalid_request_error"
    default_message = "No such resource."


class MethodNotAllowed(OmixaError):
    code, status, type = "method_not_allowed", 405, "invalid_request_error"
    default_message = "Method not allowed on this resource."


class IdempotencyKeyReused(OmixaError):
    code, status, type = "idempotency_key_reused", 409, "invalid_request_error"
    default_message = "This Idempotency-Key was already used with a different request body."


class RequestTooLarge(OmixaError):
    code, status, type = "request_too_large", 413, "invalid_request_error"
    default_message = "The request body is larger than this server accepts."


class RateLimited(OmixaError):
    code, status, type = "rate_limited", 429, "rate_limit_error"
    default_message = "Developer key exceeded rate limits."


class InternalError(OmixaError):
    pass


class UpstreamError(OmixaError):
    """The upstream answered with an error, a malformed body, or could not be reached.

    ``upstream_status`` is the upstream's HTTP status (None for connection errors); the
    router uses it (and ``retry_after``) to decide on failover and cooldown.
    """

    code, status, type = "upstream_error", 502, "upstream_error"
    default_message = "Upstream or internal processing failure."

    def __init__(
        self,
        message: str | None = None,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.upstream_status = upstream_status


class NoHealthyDeployment(OmixaError):
    code, status, type = "no_healthy_deployment", 503, "server_error"
    default_message = "No healthy Azure deployment available."


class ServiceUnavailable(OmixaError):
    code, status, type = "service_unavailable", 503, "server_error"
    default_message = "The service is shutting down or not ready."


class UpstreamTimeout(OmixaError):
    code, status, type = "upstream_timeout", 504, "upstream_error"
    default_message = "The upstream did not answer in time."


class UpstreamBusy(UpstreamTimeout):
    """No pooled connection to the upstream's origin came free within
    ``upstream.connect_timeout_seconds`` (all ``upstream.max_connections`` in use). A timeout
    like the others, so the request fails over to another deployment; but it says nothing
    about the upstream's health, so it never counts towards a breaker. The client sees 503
    ``no_healthy_deployment`` with ``Retry-After``."""

    code, status, type = "no_healthy_deployment", 503, "server_error"
    default_message = "Every connection to the upstream is in use; retry shortly."


# Upstream statuses that are the request's own fault. A 404 is not: Azure answers 404 for a
# deployment that does not exist, the operator's misconfiguration.
_CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})


def translate_upstream(exc: OmixaError) -> OmixaError:
    """What the client should see of an upstream failure.

    A 4xx that is the request's own fault (400, 413, 422: a content filter, a context
    overflow, a bad parameter) becomes ``invalid_request`` with the upstream's reason. An
    upstream 429 means this deployment has no room (``no_healthy_deployment`` with its
    Retry-After). Any other upstream status is the operator's or the upstream's business (a
    deployment that does not exist, a refused upstream key, a 5xx): it stays 502, but its
    text, which may describe the operator's setup, is replaced by a plain message (the
    deployment actor logs the upstream's own text with the deployment's name).
    """
    if not isinstance(exc, UpstreamError):
        return exc
    status = exc.upstream_status
    if status in _CLIENT_FAULT_STATUSES:
        return InvalidRequest(f"The upstream rejected the request: {exc.message}")
    if status == 429:
        return NoHealthyDeployment(retry_after=exc.retry_after or 1.0)
    if status is None or status < 400:
        return exc  # Omixa's own words (unreachable, a malformed answer), or a mid-stream error
    if status >= 500:
        return UpstreamError(f"The upstream failed to answer (HTTP {status}); retry shortly.", upstream_status=status)
    return UpstreamError("The upstream could not serve this request.", upstream_status=status)


def store_unavailable(store: str) -> ServiceUnavailable:
    """The 503 for a ``store`` ("wallet", "key", "usage") that cannot be reached now: the
    client may retry in a second."""
    return ServiceUnavailable(f"The {store} store is unavailable; retry shortly.", retry_after=1.0)


@contextlib.contextmanager
def storage_failures(store: str) -> Iterator[None]:
    """Inside the block, a storage failure is :func:`store_unavailable` (``from`` it)."""
    try:
        yield
    except StorageError as exc:
        raise store_unavailable(store) from exc
