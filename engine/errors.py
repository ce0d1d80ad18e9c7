"""Every error a client can see, in one tree with one mapping to HTTP.

OmixaError                      code                    status  type
 +-- InvalidRequest             invalid_request         400     invalid_request_error
 |    +-- UpstreamRejected      (the upstream's code)   400     invalid_request_error
 +-- InvalidApiKey              invalid_api_key         401     invalid_request_error
 +-- MissingSignature           missing_signature       401     invalid_request_error
 +-- InvalidSignature           invalid_signature       401     invalid_request_error
 +-- StaleTimestamp             stale_timestamp         401     invalid_request_error
 +-- ReplayedRequest            replayed_request        401     invalid_request_error
 +-- InsufficientBalance        insufficient_balance    402     insufficient_quota
 +-- TopUpDisabled              top_up_disabled         403     invalid_request_error
 +-- ModelNotFound              model_not_found         404     invalid_request_error
 +-- NotFoundError              not_found               404     invalid_request_error
 +-- MethodNotAllowed           method_not_allowed      405     invalid_request_error
 +-- IdempotencyKeyReused       idempotency_key_reused  409     invalid_request_error
 +-- RequestTooLarge            request_too_large       413     invalid_request_error
 +-- RateLimited                rate_limited            429     requests or tokens (+ Retry-After)
 +-- InternalError              internal_error          500     server_error
 +-- UpstreamError              upstream_error          502     server_error
 +-- NoHealthyDeployment        no_healthy_deployment   503     server_error (+ Retry-After)
 +-- ServiceUnavailable         service_unavailable     503     server_error
 +-- UpstreamTimeout            upstream_timeout        504     server_error
      +-- UpstreamBusy          no_healthy_deployment   503     server_error (+ Retry-After)

The web layer renders any of these as ``{"error": {"message", "type", "param", "code",
"request_id"}}`` (OpenAI's error object, plus the request id) with the status above; anything
else becomes ``internal_error`` without leaking details. The types are OpenAI's, so that
client code keyed on them (an SDK's exception classes, a framework's retry rules) works:
OpenAI sends every 4xx that is the request's fault as ``invalid_request_error`` (401
included), an exhausted balance as ``insufficient_quota``, a 429 as ``requests`` or
``tokens`` after the limit that refused, and every 5xx as ``server_error``. ``param`` names
the one request field at fault (a path such as ``messages[0].role``), else null.

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


# An upstream's error code that is passed on to the client: one short word (OpenAI's are
# snake_case), never a number or prose.
UPSTREAM_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def redact_secrets(text: str) -> str:
    """``text`` with every key- or secret-shaped token replaced by its prefix and ``[redacted]``."""
    return _SECRET_SHAPED.sub(lambda m: f"omx_{m[1]}_[redacted]", text)


class OmixaError(Exception):
    code = "internal_error"
    status = 500
    type = "server_error"
    default_message = "Internal processing failure."

    def __init__(
        self, message: str | None = None, *, param: str | None = None, retry_after: float | None = None
    ) -> None:
        """``param``: the one request field at fault (OpenAI's path, e.g. ``messages[2].content``)."""
        self.message = redact_secrets(message) if message else self.default_message
        self.param = redact_secrets(param) if param else None
        self.retry_after = retry_after
        super().__init__(self.message)

    def envelope(self, request_id: str) -> dict[str, Any]:
        """The OpenAI-shaped error body: ``{"error": {"message", "type", "param", "code",
        "request_id"}}`` (an HTTP error response's body, and a stream's error event's data)."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
                "request_id": request_id,
            }
        }


class InvalidRequest(OmixaError):
    code, status, type = "invalid_request", 400, "invalid_request_error"
    default_message = "The request is not valid."


class UpstreamRejected(InvalidRequest):
    """The upstream refused the request as the request's own fault (a content filter, a
    context overflow, a bad parameter). What the upstream said of it describes the client's
    own request, so it is passed on: its ``code`` (``invalid_request`` when it gave none
    usable), its ``param``, and Azure's ``innererror`` (a content filter's verdict)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        innererror: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, param=param)
        if code is not None:
            self.code = code
        self.innererror = innererror

    def envelope(self, request_id: str) -> dict[str, Any]:
        body = super().envelope(request_id)
        if self.innererror is not None:
            body["error"]["innererror"] = self.innererror
        return body


class InvalidApiKey(OmixaError):
    # OpenAI's type for a bad key too (its 401s are invalid_request_error, code invalid_api_key).
    code, status, type = "invalid_api_key", 401, "invalid_request_error"
    default_message = "Missing or invalid API key. Send it as 'Authorization: Bearer omx_live_...'."


class MissingSignature(OmixaError):
    code, status, type = "missing_signature", 401, "invalid_request_error"
    default_message = (
        "This request must be signed: send X-Omixa-Timestamp and X-Omixa-Signature "
        "(sha256=HMAC of timestamp.METHOD.path.body with your signing secret)."
    )


class InvalidSignature(OmixaError):
    code, status, type = "invalid_signature", 401, "invalid_request_error"
    default_message = "The request signature does not match."


class StaleTimestamp(OmixaError):
    code, status, type = "stale_timestamp", 401, "invalid_request_error"
    default_message = "X-Omixa-Timestamp is too far from the server's clock."


class ReplayedRequest(OmixaError):
    code, status, type = "replayed_request", 401, "invalid_request_error"
    default_message = "This signature was already used. Sign every request afresh, with a new X-Omixa-Nonce."


class InsufficientBalance(OmixaError):
    # OpenAI's type for an exhausted balance (it sends it with a 429; ours is a 402).
    code, status, type = "insufficient_balance", 402, "insufficient_quota"
    default_message = "Wallet balance is not enough for this request."


class TopUpDisabled(OmixaError):
    code, status, type = "top_up_disabled", 403, "invalid_request_error"
    default_message = "Self-service top-up is disabled on this server; ask the operator to top up your wallet."


class ModelNotFound(OmixaError):
    code, status, type = "model_not_found", 404, "invalid_request_error"
    default_message = "The model does not exist or is not enabled."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, param="model")


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
    """``limit``: which of the key's limits refused, ``"requests"`` (per minute) or
    ``"tokens"`` (per minute); it is the type, as OpenAI's 429s say which limit was hit."""

    code, status, type = "rate_limited", 429, "requests"
    default_message = "Developer key exceeded rate limits."
    LIMITS = ("requests", "tokens")

    def __init__(self, message: str | None = None, *, limit: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.type = limit


class InternalError(OmixaError):
    pass


class UpstreamError(OmixaError):
    """The upstream answered with an error, a malformed body, or could not be reached.

    ``upstream_status`` is the upstream's HTTP status (None for connection errors); the
    router uses it (and ``retry_after``) to decide on failover and cooldown. ``upstream_code``,
    ``param`` and ``innererror`` are what the upstream's error body said (Azure's; checked
    by the adapter), passed on to the client only when the request was at fault
    (:func:`translate_upstream`).
    """

    code, status, type = "upstream_error", 502, "server_error"
    default_message = "Upstream or internal processing failure."

    def __init__(
        self,
        message: str | None = None,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        upstream_code: str | None = None,
        param: str | None = None,
        innererror: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, param=param, retry_after=retry_after)
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code
        self.innererror = innererror


class NoHealthyDeployment(OmixaError):
    code, status, type = "no_healthy_deployment", 503, "server_error"
    default_message = "No healthy Azure deployment available."


class ServiceUnavailable(OmixaError):
    code, status, type = "service_unavailable", 503, "server_error"
    default_message = "The service is shutting down or not ready."


class UpstreamTimeout(OmixaError):
    code, status, type = "upstream_timeout", 504, "server_error"
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
    overflow, a bad parameter) becomes a 400 :class:`UpstreamRejected` with the upstream's
    reason, code, param and innererror. An upstream 429 means this deployment has no room
    (``no_healthy_deployment`` with its Retry-After). Any other upstream status is the
    operator's or the upstream's business (a deployment that does not exist, a refused
    upstream key, a 5xx): it stays 502, but its text, which may describe the operator's
    setup, is replaced by a plain message (the deployment actor logs the upstream's own text
    with the deployment's name), and nothing else of the upstream's body is passed on.
    """
    if not isinstance(exc, UpstreamError):
        return exc
    status = exc.upstream_status
    if status in _CLIENT_FAULT_STATUSES:
        return UpstreamRejected(
            f"The upstream rejected the request: {exc.message}",
            code=exc.upstream_code,
            param=exc.param,
            innererror=exc.innererror,
        )
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
