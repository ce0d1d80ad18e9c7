"""Verifying request signatures (HMAC-SHA256), and the replay cache behind them.

The signed string and the header format are defined once, in :mod:`omixa_client`. A request
is verified when the gateway requires signatures (``[security] require_signature`` /
``OMIXA_REQUIRE_SIGNATURE``), when its key was created with ``--require-signature``, or when
it carries ``X-Omixa-Signature`` anyway. Checks, in order, each a 401 in the standard
envelope:

1. both ``X-Omixa-Timestamp`` and ``X-Omixa-Signature`` present, else ``missing_signature``;
2. well-formed timestamp, nonce and signature, else ``invalid_signature``;
3. timestamp within ``signature_window_seconds`` of the server's clock, else
   ``stale_timestamp``;
4. the HMAC matches the key's signing secret, or its previous one during the grace period
   after a rotation (constant-time comparison), else ``invalid_signature``;
5. for a request that carries ``X-Omixa-Nonce``, the signature was not seen before, else
   ``replayed_request``.

Replays follow the request-signing schemes people know (AWS SigV4, Slack, Stripe): a request
signed without a nonce is bounded by the timestamp window alone, so a client may sign the
same ``GET /api/v1/wallet`` twice in one second, or retry at once, and both are served; a
request signed with a nonce is accepted once. With ``[security] one_time_signatures`` every
signed request must carry a nonce (else ``missing_signature``) and is accepted once.

Replay cache: one per key; only signatures with a nonce that verified are remembered, until
their timestamp leaves the window; a key's cache is dropped once it is empty (checked every
:data:`PRUNE_SECONDS` across all keys), so keys that stop signing leave nothing behind.
Each is bounded: when full, the entry with the oldest timestamp is forgotten and that key's
requests signed at or before that timestamp are refused as ``stale_timestamp`` from then on,
so forgetting never lets a replay through (under a flood the key's accepted window narrows;
other keys are not affected). Timestamps may run at most
``MAX_FUTURE_SKEW`` (30 s) ahead of the server's clock. Memory is bounded by the signed
requests one process can verify within the window, whatever the number of keys.
A process also refuses requests signed before it started, so a restart does not open a
replay window.

Across processes (``[cluster] redis_url``): a signature with a nonce that this process's
cache accepted is then claimed in Redis (``SET NX`` until its timestamp leaves the window,
:meth:`SignatureVerifier.claim`), so a replay sent to *another* process within the window is
refused too. While Redis does not answer, each process's own cache is all there is: a replay
sent to another process during the gap is not detected (logged once when Redis goes away).
Without Redis the cache is per process.

Cancellation: :meth:`SignatureVerifier.verify` is synchronous; check and insert are one
step under Trio's scheduling. A claim cancelled midway may or may not have been recorded.
"""

from __future__ import annotations

import heapq
import hmac
import logging
import re

import attrs

from omixa.engine.cluster import ClusterLink
from omixa.engine.config import SecurityConfig
from omixa.engine.errors import (
    InvalidSignature,
    MissingSignature,
    ReplayedRequest,
    ServiceUnavailable,
    StaleTimestamp,
)
from omixa.engine.secretbox import SECRET_KEY_ENV, SecretBox, SecretKeyError
from omixa.storage import ApiKeyRecord, SigningSummary
from omixa.storage.coordination import CoordinatorError
from omixa_client import SIGNATURE_PREFIX, sign, signed_message

log = logging.getLogger("omixa.signatures")

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")
# A timestamp may run at most this far ahead of the server's clock (clock skew), so a
# future-dated signature cannot sit in the replay cache for long.
MAX_FUTURE_SKEW = 30
# How often every key's replay cache is swept of expired signatures (and dropped when empty).
PRUNE_SECONDS = 60.0


class ReplayCache:
    """Signatures seen recently, bounded in memory.

    ``floor``: a timestamp at or below it is refused, because a signature with such a
    timestamp may have been forgotten (evicted, expired) or seen by the previous process.
    """

    def __init__(self, capacity: int, window: int, *, floor: int = -1) -> None:
        self.capacity = capacity
        self.window = window
        self.floor = floor
        self._seen: set[bytes] = set()
        self._heap: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def expire(self, now: float) -> None:
        """Forget the signatures whose timestamp left the window."""
        heap, seen = self._heap, self._seen
        horizon = now - self.window
        while heap and heap[0][0] < horizon:
            old_ts, old = heapq.heappop(heap)
            seen.discard(old)
            # Even if the wall clock later steps back, this signature stays refused.
            self.floor = max(self.floor, old_ts)

    def admit(self, ident: bytes, timestamp: int, now: float) -> str | None:
        """Remember ``ident``; return None, or why it is refused: ``"replayed"`` or
        ``"too_old"`` (its timestamp is at or below the floor)."""
        heap, seen = self._heap, self._seen
        self.expire(now)
        if ident in seen:
            return "replayed"
        if timestamp <= self.floor:
            return "too_old"
        if len(heap) >= self.capacity:
            old_ts, old = heapq.heappop(heap)
            seen.discard(old)
            self.floor = max(self.floor, old_ts)
            if timestamp <= self.floor:
                return "too_old"
        heapq.heappush(heap, (timestamp, ident))
        seen.add(ident)
        return None


@attrs.frozen(kw_only=True)
class Claim:
    """A signature with a nonce that verified: to claim fleet-wide (:meth:`SignatureVerifier.claim`)."""

    key_id: str
    signature: str  # the hex digest
    seconds: float  # until its timestamp leaves the window


class SignatureVerifier:
    """One per process (the engine's). See the module docstring for the checks."""

    def __init__(
        self,
        config: SecurityConfig,
        box: SecretBox | None,
        *,
        started_at: float,
        cluster: ClusterLink | None = None,
    ) -> None:
        self._cluster = cluster
        self.required = config.require_signature
        self.one_time = config.one_time_signatures
        self.window = config.signature_window_seconds
        self.box = box
        # Requests signed before this process started may have been seen by its predecessor.
        self._capacity = config.replay_cache_size
        self._started_floor = int(started_at) - 1
        # One cache per key: a flood of one key's signatures (its own secret) can only
        # narrow that key's window, never another tenant's.
        self._replays: dict[str, ReplayCache] = {}
        self._pruned_at = started_at

    @property
    def remembered(self) -> int:
        """Signatures in every key's replay cache."""
        return sum(len(cache) for cache in self._replays.values())

    def prune(self, now: float) -> None:
        """Expire every key's old signatures and drop the caches left empty.

        Dropping one is safe: every signature it forgot, and its floor, lie before the
        window, so the window check refuses them anyway; a new cache starts from the
        process's start, as the first one did.
        """
        self._pruned_at = now
        for key_id, cache in list(self._replays.items()):
            cache.expire(now)
            if not len(cache):
                del self._replays[key_id]

    def replays(self, key_id: str) -> ReplayCache:
        cache = self._replays.get(key_id)
        if cache is None:
            cache = self._replays[key_id] = ReplayCache(self._capacity, self.window, floor=self._started_floor)
        return cache

    def applies(self, key: ApiKeyRecord, signature_sent: bool) -> bool:
        """Whether a request with this key must pass :meth:`verify`."""
        return self.required or key.signature_required or signature_sent

    def verify(
        self,
        key: ApiKeyRecord,
        *,
        timestamp: str | None,
        nonce: str | None,
        signature: str | None,
        method: str,
        target: bytes,
        body: bytes,
        now: float,
    ) -> Claim | None:
        """Check one request's signature and remember it; return what to :meth:`claim` across
        processes (a signature with a nonce), if anything.

        Args:
            key: The authenticated key (its encrypted secrets come with it).
            timestamp, nonce, signature: The header values as received (None if absent).
            method: The request method as received.
            target: The raw path from ``/api/v1`` plus ``?query`` if the query is not empty.
            body: The exact body bytes.
            now: The server's wall clock, Unix seconds.

        Errors: MissingSignature, InvalidSignature, StaleTimestamp, ReplayedRequest (all
        401); ServiceUnavailable when this server cannot decrypt the key's secret
        (``OMIXA_SECRET_KEY`` unset or wrong; logged).
        """
        if not timestamp or not signature:
            raise MissingSignature()
        if self.one_time and not nonce:
            raise MissingSignature(
                "This server accepts each signed request once: send X-Omixa-Nonce (a new random "
                "value for every request) and include it in the signed string."
            )
        timestamp, signature = timestamp.strip(), signature.strip()
        if not _TIMESTAMP.fullmatch(timestamp):
            raise InvalidSignature("X-Omixa-Timestamp must be a Unix time in whole seconds.")
        if nonce is not None and not _NONCE.fullmatch(nonce):
            raise InvalidSignature("X-Omixa-Nonce must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'.")
        if not _SIGNATURE.fullmatch(signature):
            raise InvalidSignature("X-Omixa-Signature must be 'sha256=' followed by 64 hex digits.")
        sent_at = int(timestamp)
        if sent_at - now > min(MAX_FUTURE_SKEW, self.window):
            raise StaleTimestamp(
                f"X-Omixa-Timestamp is more than {min(MAX_FUTURE_SKEW, self.window)} seconds ahead "
                f"of the server's clock ({int(now)}). Sign with the current Unix time."
            )
        if abs(now - sent_at) > self.window:
            raise StaleTimestamp(
                f"X-Omixa-Timestamp is more than {self.window} seconds away from the server's "
                f"clock ({int(now)}). Sign with the current Unix time."
            )
        given = signature.lower()
        message = signed_message(timestamp, method, target, body, nonce)
        if not any(hmac.compare_digest(sign(secret, message), given) for secret in self._secrets(key, now)):
            raise InvalidSignature()
        if now - self._pruned_at >= PRUNE_SECONDS:
            self.prune(now)
        if nonce is None:
            return None  # no nonce: the timestamp window is the replay bound
        replays = self.replays(key.id)
        digest = given[len(SIGNATURE_PREFIX) :]
        refused = replays.admit(bytes.fromhex(digest), sent_at, now)
        if refused == "replayed":
            raise ReplayedRequest()
        if refused == "too_old":
            raise StaleTimestamp(
                f"X-Omixa-Timestamp {sent_at} is older than this server accepts now "
                f"(after {replays.floor}). Sign with the current Unix time."
            )
        return Claim(key_id=key.id, signature=digest, seconds=max(sent_at + self.window - now, 1.0))

    async def claim(self, claim: Claim | None) -> None:
        """Claim a verified signature for the whole fleet (with ``[cluster] redis_url``; else
        nothing to do).

        Errors: ReplayedRequest when another process accepted it already. Redis not
        answering is not an error: this process's own cache has accepted it (logged once).
        """
        if claim is None or self._cluster is None:
            return
        cluster = self._cluster
        try:
            first = await cluster.coordinator.claim(f"nonce:{claim.key_id}:{claim.signature}", claim.seconds)
        except CoordinatorError as exc:
            cluster.went_alone("signatures", str(exc))
            return
        cluster.rejoined("signatures")
        if not first:
            raise ReplayedRequest()

    def _secrets(self, key: ApiKeyRecord, now: float) -> list[str]:
        """The key's current signing secret, and its previous one while in its grace period."""
        tokens = [key.signing_secret_enc] if key.signing_secret_enc else []
        expires = key.previous_secret_expires_at
        if key.previous_secret_enc and expires is not None and expires.timestamp() > now:
            tokens.append(key.previous_secret_enc)
        if not tokens:
            raise InvalidSignature(
                "This key has no signing secret. Ask the operator to issue one (omixa key rotate-secret KEY_ID)."
            )
        if self.box is None:
            log.error("key %s needs a signature check but OMIXA_SECRET_KEY is not set", key.id)
            raise ServiceUnavailable("Request signatures cannot be verified by this server.")
        try:
            return [self.box.decrypt(token) for token in tokens]
        except SecretKeyError as exc:
            log.error("key %s: %s", key.id, exc)
            raise ServiceUnavailable("Request signatures cannot be verified by this server.") from None


def check_signing_setup(config: SecurityConfig, box: SecretBox | None, summary: SigningSummary) -> None:
    """Refuse to serve with signatures enforced but unverifiable.

    Errors: SecretKeyError when signatures are required (by the config or by any live key)
    and ``OMIXA_SECRET_KEY`` is unset, or when it does not decrypt a stored signing secret.
    """
    if box is None:
        if config.require_signature:
            raise SecretKeyError(
                f"signatures are required (OMIXA_REQUIRE_SIGNATURE / [security] require_signature) "
                f"but {SECRET_KEY_ENV} is not set: the server cannot read the keys' signing secrets"
            )
        if summary.required_keys:
            raise SecretKeyError(
                f"{summary.required_keys} live key(s) require signatures but {SECRET_KEY_ENV} is "
                "not set: the server cannot read their signing secrets"
            )
        if summary.sample_secret_enc is not None:
            log.warning("%s is not set: requests that carry a signature will get 503 until it is", SECRET_KEY_ENV)
        return
    if summary.sample_secret_enc is not None:
        box.decrypt(summary.sample_secret_enc)
