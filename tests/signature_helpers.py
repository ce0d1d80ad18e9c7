"""What the signature tests share: a fixed clock, a server key and a signing secret, the
hypothesis strategies for requests, a key record, a verifier, and a call of it."""

from __future__ import annotations

import datetime as dt

from cryptography.fernet import Fernet
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from omixa.engine.config import SecurityConfig
from omixa.engine.secretbox import SecretBox, generate_signing_secret
from omixa.engine.signatures import MAX_FUTURE_SKEW, SignatureVerifier
from omixa.storage import ApiKeyRecord

NOW = 1_780_660_800.0
WINDOW = 300
BOX = SecretBox([Fernet.generate_key()])
SECRET = generate_signing_secret()

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
SEGMENT = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.~%", min_size=1, max_size=12)
PATHS = st.lists(SEGMENT, min_size=1, max_size=4).map(lambda parts: "/api/v1/" + "/".join(parts))
QUERIES = st.one_of(st.just(""), st.text("abcdefghijklmnopqrstuvwxyz0123456789=&%+-_", min_size=1, max_size=30))
NONCES = st.one_of(
    st.none(), st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=64)
)
BODIES = st.binary(max_size=2048)  # arbitrary bytes: non-UTF-8 included
OFFSETS = st.integers(min_value=-WINDOW, max_value=min(WINDOW, MAX_FUTURE_SKEW))
# No per-example deadline: the suite shares two cores with other runs, and a slow example is
# not a wrong one.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def key_record(secret: str | None = SECRET, key_id: str = "key_test", **extra) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key_id,
        account_id="acct_test",
        prefix="omx_live_abcdef",
        rpm=None,
        tpm=None,
        created_at=dt.datetime.now(dt.UTC),
        revoked_at=None,
        signing_secret_enc=None if secret is None else BOX.encrypt(secret),
        **extra,
    )


def verifier(**config) -> SignatureVerifier:
    return SignatureVerifier(SecurityConfig(signature_window_seconds=WINDOW, **config), BOX, started_at=NOW - 3600)


def target(path: str, query: str) -> bytes:
    return (path + ("?" + query if query else "")).encode()


def check(
    v: SignatureVerifier,
    key: ApiKeyRecord,
    headers: dict[str, str],
    method: str,
    tgt: bytes,
    body: bytes,
    now: float = NOW,
) -> None:
    v.verify(
        key,
        timestamp=headers.get("X-Omixa-Timestamp"),
        nonce=headers.get("X-Omixa-Nonce"),
        signature=headers.get("X-Omixa-Signature"),
        method=method,
        target=tgt,
        body=body,
        now=now,
    )
