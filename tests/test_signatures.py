"""Request signatures, property-based: the verifier against the shipped signer and against an
HMAC built by hand from the documented string.

Real objects throughout (a real Fernet server key, real records); no gateway here: the end-to-end
tests are in test_signing_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omixa.engine.config import ConfigError, SecurityConfig
from omixa.engine.config_loader import structure_config
from omixa.engine.errors import (
    InvalidSignature,
    MissingSignature,
    ReplayedRequest,
    ServiceUnavailable,
    StaleTimestamp,
)
from omixa.engine.secretbox import SecretBox, SecretKeyError, generate_signing_secret, secret_box_from_env
from omixa.engine.signatures import MAX_FUTURE_SKEW, ReplayCache, SignatureVerifier, check_signing_setup
from omixa.storage import ApiKeyRecord, SigningSummary
from omixa_client import OmixaSigner, sign, signature_headers, signed_message

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


@settings(PROPERTY, max_examples=200)
@given(method=METHODS, path=PATHS, query=QUERIES, body=BODIES, nonce=NONCES, offset=OFFSETS)
def test_a_valid_signature_over_any_bytes_verifies(method, path, query, body, nonce, offset):
    ts = int(NOW) + offset
    headers = signature_headers(SECRET, method, target(path, query), body, timestamp=ts, nonce=nonce)
    if nonce is None:  # signature_headers always adds one; drop it and sign without
        headers.pop("X-Omixa-Nonce")
        headers["X-Omixa-Signature"] = sign(SECRET, signed_message(ts, method, target(path, query), body))
    # The documented string, built by hand, gives the same signature.
    head = f"{ts}." + (f"{nonce}." if nonce is not None else "") + f"{method}.{path}"
    by_hand = hmac.new(
        SECRET.encode(), head.encode() + (b"?" + query.encode() if query else b"") + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["X-Omixa-Signature"] == "sha256=" + by_hand
    check(verifier(), key_record(), headers, method, target(path, query), body)


@st.composite
def request_and_change(draw):
    original = {
        "ts": int(NOW) + draw(OFFSETS),
        "method": draw(METHODS),
        "path": draw(PATHS),
        "query": draw(QUERIES),
        "body": draw(BODIES),
        "nonce": draw(NONCES),
    }
    field = draw(st.sampled_from(["ts", "method", "path", "query", "body", "nonce"]))
    changed = dict(original)
    if field == "ts":
        changed["ts"] = int(NOW) + draw(OFFSETS.filter(lambda o: int(NOW) + o != original["ts"]))
    elif field == "method":
        changed["method"] = draw(METHODS.filter(lambda m: m != original["method"]))
    elif field == "path":
        changed["path"] = draw(PATHS.filter(lambda p: p != original["path"]))
    elif field == "query":
        changed["query"] = draw(QUERIES.filter(lambda q: q != original["query"]))
    elif field == "body":
        changed["body"] = draw(BODIES.filter(lambda b: b != original["body"]))
    else:
        changed["nonce"] = draw(NONCES.filter(lambda n: n != original["nonce"]))
    return original, changed


def headers_for(r: dict) -> dict[str, str]:
    tgt = target(r["path"], r["query"])
    headers = {
        "X-Omixa-Timestamp": str(r["ts"]),
        "X-Omixa-Signature": sign(SECRET, signed_message(r["ts"], r["method"], tgt, r["body"], r["nonce"])),
    }
    if r["nonce"] is not None:
        headers["X-Omixa-Nonce"] = r["nonce"]
    return headers


@settings(PROPERTY, max_examples=300)
@given(request_and_change())
def test_any_change_to_timestamp_method_path_query_body_or_nonce_invalidates(pair):
    original, changed = pair
    # The headers signed for the original, sent with the changed request (its own timestamp
    # and nonce header, where those are what changed).
    headers = headers_for(original)
    headers["X-Omixa-Timestamp"] = str(changed["ts"])
    headers.pop("X-Omixa-Nonce", None)
    if changed["nonce"] is not None:
        headers["X-Omixa-Nonce"] = changed["nonce"]
    tgt = target(changed["path"], changed["query"])
    with pytest.raises(InvalidSignature):
        check(verifier(), key_record(), headers, changed["method"], tgt, changed["body"])
    # ... and the original itself verifies.
    check(
        verifier(),
        key_record(),
        headers_for(original),
        original["method"],
        target(original["path"], original["query"]),
        original["body"],
    )


@PROPERTY
@given(
    method=METHODS,
    path=PATHS,
    body=BODIES,
    late=st.integers(min_value=WINDOW + 1, max_value=10**6),
    future=st.booleans(),
)
def test_a_timestamp_outside_the_window_is_refused(method, path, body, late, future):
    ts = int(NOW) + (late if future else -late)
    headers = signature_headers(SECRET, method, path, body, timestamp=ts)
    with pytest.raises(StaleTimestamp):
        check(verifier(), key_record(), headers, method, path.encode(), body)


@PROPERTY
@given(method=METHODS, path=PATHS, body=BODIES, nonce=NONCES, later=st.integers(min_value=0, max_value=WINDOW))
def test_a_replay_inside_the_window_is_refused(method, path, body, nonce, later):
    v = verifier()
    headers = signature_headers(SECRET, method, path, body, timestamp=int(NOW), nonce=nonce or "n")
    check(v, key_record(), headers, method, path.encode(), body)
    with pytest.raises(ReplayedRequest):
        check(v, key_record(), headers, method, path.encode(), body, now=NOW + later)
    # After the window it is stale, never accepted again.
    with pytest.raises(StaleTimestamp):
        check(v, key_record(), headers, method, path.encode(), body, now=NOW + WINDOW + 1 + later)


def test_two_identical_requests_in_one_second_pass_with_distinct_nonces():
    v = verifier()
    for _ in range(2):
        check(
            v,
            key_record(),
            signature_headers(SECRET, "GET", "/api/v1/wallet", timestamp=int(NOW)),
            "GET",
            b"/api/v1/wallet",
            b"",
        )


def without_nonce(method: str, path: str, body: bytes = b"", ts: int = int(NOW)) -> dict[str, str]:
    """Headers signing the API docs' string, ``timestamp.METHOD.path.body``: no nonce."""
    return {
        "X-Omixa-Timestamp": str(ts),
        "X-Omixa-Signature": sign(SECRET, signed_message(ts, method, path, body)),
    }


def test_without_a_nonce_the_timestamp_window_is_the_replay_bound():
    """Polling or retrying at once with the same signed request works (AWS SigV4, Slack,
    Stripe do the same); once the timestamp leaves the window it is stale."""
    v = verifier()
    headers = without_nonce("GET", "/api/v1/wallet")
    for later in (0, 0, 1, WINDOW):
        check(v, key_record(), headers, "GET", b"/api/v1/wallet", b"", now=NOW + later)
    with pytest.raises(StaleTimestamp):
        check(v, key_record(), headers, "GET", b"/api/v1/wallet", b"", now=NOW + WINDOW + 1)
    assert v.remembered == 0  # nothing to remember without a nonce


def test_one_time_signatures_need_a_nonce_and_accept_each_request_once():
    v = verifier(one_time_signatures=True)
    with pytest.raises(MissingSignature, match="X-Omixa-Nonce"):
        check(v, key_record(), without_nonce("GET", "/api/v1/wallet"), "GET", b"/api/v1/wallet", b"")
    headers = signature_headers(SECRET, "GET", "/api/v1/wallet", timestamp=int(NOW))
    check(v, key_record(), headers, "GET", b"/api/v1/wallet", b"")
    with pytest.raises(ReplayedRequest):
        check(v, key_record(), headers, "GET", b"/api/v1/wallet", b"", now=NOW + 1)


def test_replay_memory_of_keys_that_stop_signing_is_dropped():
    """Each key's cache is swept as the window passes; an empty one goes, and what it
    forgot stays refused (as stale)."""
    v = verifier()
    sent = []
    for i in range(50):
        key = key_record(key_id=f"key_{i}")
        headers = signature_headers(SECRET, "GET", "/api/v1/models", timestamp=int(NOW))
        check(v, key, headers, "GET", b"/api/v1/models", b"")
        sent.append((key, headers))
    assert v.remembered == 50
    # One more key signs after the window: the sweep forgets all 50 and their caches.
    later = NOW + WINDOW + 61
    check(
        v,
        key_record(key_id="key_late"),
        signature_headers(SECRET, "GET", "/api/v1/models", timestamp=int(later)),
        "GET",
        b"/api/v1/models",
        b"",
        now=later,
    )
    assert v.remembered == 1 and len(v._replays) == 1
    for key, headers in sent:
        with pytest.raises(StaleTimestamp):
            check(v, key, headers, "GET", b"/api/v1/models", b"", now=later)


@settings(PROPERTY, max_examples=200)
@given(
    capacity=st.integers(min_value=1, max_value=8),
    events=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 50), st.integers(0, 60)), max_size=80),
)
def test_the_bounded_replay_cache_never_admits_a_signature_twice(capacity, events):
    # (ident, timestamp offset, clock advance): whatever the order and the evictions, an
    # ident is admitted at most once while its timestamp is inside the window.
    cache = ReplayCache(capacity, window=30)
    admitted: set[int] = set()
    now = 1000.0
    for ident, ts_offset, advance in events:
        now += advance / 10
        ts = int(now) - ts_offset
        if abs(now - ts) > 30:
            continue  # the verifier refuses it as stale before the cache
        if cache.admit(bytes([ident]) + ts.to_bytes(8, "big"), ts, now) is None:
            assert (ident, ts) not in admitted
            admitted.add((ident, ts))
        assert len(cache) <= capacity


def test_a_full_cache_narrows_the_window_instead_of_forgetting_silently():
    cache = ReplayCache(2, window=300)
    assert cache.admit(b"a", 100, 150) is None
    assert cache.admit(b"b", 110, 150) is None
    assert cache.admit(b"c", 120, 150) is None  # evicts a (ts 100): floor 100
    assert cache.admit(b"a", 100, 150) == "too_old"  # the forgotten one stays refused
    assert cache.admit(b"d", 100, 150) == "too_old"
    assert cache.admit(b"b", 110, 150) == "replayed"


def test_a_timestamp_far_ahead_is_refused_and_one_keys_flood_leaves_others_alone():
    v = verifier(replay_cache_size=5)
    ahead = signature_headers(SECRET, "GET", "/api/v1/wallet", timestamp=int(NOW) + MAX_FUTURE_SKEW + 1)
    with pytest.raises(StaleTimestamp, match="ahead"):
        check(v, key_record(), ahead, "GET", b"/api/v1/wallet", b"")
    # The attacker fills its own key's cache with signatures dated as late as allowed...
    for i in range(20):
        headers = signature_headers(SECRET, "GET", f"/api/v1/wallet?i={i}", timestamp=int(NOW) + MAX_FUTURE_SKEW)
        try:
            check(v, key_record(key_id="key_attacker"), headers, "GET", f"/api/v1/wallet?i={i}".encode(), b"")
        except StaleTimestamp:
            pass  # its own window narrowed
    # ... and another key signing at the current time is not affected (up to its own bound).
    for i in range(5):
        headers = signature_headers(SECRET, "GET", f"/api/v1/models?i={i}", timestamp=int(NOW))
        check(v, key_record(key_id="key_victim"), headers, "GET", f"/api/v1/models?i={i}".encode(), b"")


def test_requests_signed_before_the_process_started_are_refused():
    v = SignatureVerifier(SecurityConfig(), BOX, started_at=NOW)
    headers = signature_headers(SECRET, "GET", "/api/v1/models", timestamp=int(NOW) - 5)
    with pytest.raises(StaleTimestamp, match="older than this server accepts"):
        check(v, key_record(), headers, "GET", b"/api/v1/models", b"")
    check(
        v,
        key_record(),
        signature_headers(SECRET, "GET", "/api/v1/models", timestamp=int(NOW)),
        "GET",
        b"/api/v1/models",
        b"",
    )


@pytest.mark.parametrize(
    "headers, error",
    [
        ({}, MissingSignature),
        ({"X-Omixa-Timestamp": str(int(NOW))}, MissingSignature),
        ({"X-Omixa-Signature": "sha256=" + "0" * 64}, MissingSignature),
        ({"X-Omixa-Timestamp": "soon", "X-Omixa-Signature": "sha256=" + "0" * 64}, InvalidSignature),
        ({"X-Omixa-Timestamp": str(int(NOW)), "X-Omixa-Signature": "0" * 64}, InvalidSignature),
        ({"X-Omixa-Timestamp": str(int(NOW)), "X-Omixa-Signature": "sha256=xyz"}, InvalidSignature),
        (
            {"X-Omixa-Timestamp": str(int(NOW)), "X-Omixa-Nonce": "a" * 65, "X-Omixa-Signature": "sha256=" + "0" * 64},
            InvalidSignature,
        ),
        (
            {"X-Omixa-Timestamp": str(int(NOW)), "X-Omixa-Nonce": "a.b", "X-Omixa-Signature": "sha256=" + "0" * 64},
            InvalidSignature,
        ),
        ({"X-Omixa-Timestamp": str(int(NOW)), "X-Omixa-Signature": "sha256=" + "0" * 64}, InvalidSignature),
    ],
)
def test_malformed_or_missing_headers(headers, error):
    with pytest.raises(error) as caught:
        check(verifier(), key_record(), headers, "GET", b"/api/v1/models", b"")
    assert caught.value.status == 401
    assert SECRET not in caught.value.message


def test_uppercase_hex_verifies_once_and_its_lowercase_twin_is_a_replay():
    v = verifier()
    headers = signature_headers(SECRET, "GET", "/api/v1/models", timestamp=int(NOW), nonce="n1")
    upper = {**headers, "X-Omixa-Signature": "sha256=" + headers["X-Omixa-Signature"][7:].upper()}
    check(v, key_record(), upper, "GET", b"/api/v1/models", b"")
    with pytest.raises(ReplayedRequest):
        check(v, key_record(), headers, "GET", b"/api/v1/models", b"")


def test_previous_secret_verifies_only_during_its_grace_period():
    old, new = generate_signing_secret(), generate_signing_secret()
    until = dt.datetime.fromtimestamp(NOW + 60, dt.UTC)
    key = key_record(new, previous_secret_enc=BOX.encrypt(old), previous_secret_expires_at=until)
    v = verifier()
    for secret in (new, old):
        check(
            v,
            key,
            signature_headers(secret, "GET", "/api/v1/models", timestamp=int(NOW)),
            "GET",
            b"/api/v1/models",
            b"",
        )
    with pytest.raises(InvalidSignature):
        check(
            v,
            key,
            signature_headers(old, "GET", "/api/v1/models", timestamp=int(NOW) + 61),
            "GET",
            b"/api/v1/models",
            b"",
            now=NOW + 61,
        )
    with pytest.raises(InvalidSignature):
        check(
            v,
            key,
            signature_headers(generate_signing_secret(), "GET", "/api/v1/models", timestamp=int(NOW)),
            "GET",
            b"/api/v1/models",
            b"",
        )


def test_a_key_without_a_secret_or_a_server_without_the_key_fails_clearly():
    headers = signature_headers(SECRET, "GET", "/api/v1/models", timestamp=int(NOW))
    with pytest.raises(InvalidSignature, match="no signing secret"):
        check(verifier(), key_record(None), headers, "GET", b"/api/v1/models", b"")
    blind = SignatureVerifier(SecurityConfig(), None, started_at=0)
    with pytest.raises(ServiceUnavailable):
        check(blind, key_record(), headers, "GET", b"/api/v1/models", b"")
    wrong = SignatureVerifier(SecurityConfig(), SecretBox([Fernet.generate_key()]), started_at=0)
    with pytest.raises(ServiceUnavailable):
        check(wrong, key_record(), headers, "GET", b"/api/v1/models", b"")


def test_when_verification_applies():
    v, strict = verifier(), verifier(require_signature=True)
    plain, marked = key_record(), key_record(signature_required=True)
    assert not v.applies(plain, signature_sent=False)
    assert v.applies(plain, signature_sent=True)  # a signature sent is always checked
    assert v.applies(marked, signature_sent=False)
    assert strict.applies(plain, signature_sent=False)


def test_secret_box_round_trip_rotation_and_bad_keys():
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token = SecretBox([old]).encrypt(SECRET)
    assert SECRET not in token
    assert SecretBox([new, old]).decrypt(token) == SECRET  # a new server key, the old still read
    with pytest.raises(SecretKeyError):
        SecretBox([new]).decrypt(token)
    with pytest.raises(SecretKeyError, match="not a Fernet key"):
        secret_box_from_env({"OMIXA_SECRET_KEY": "not-a-key"})
    assert secret_box_from_env({"OMIXA_SECRET_KEY": "  "}) is None
    assert secret_box_from_env({"OMIXA_SECRET_KEY": f"{new.decode()},{old.decode()}"}).decrypt(token) == SECRET
    assert "<keys>" in repr(SecretBox([old]))


def test_start_up_refuses_enforcement_it_cannot_honour():
    none = SigningSummary(required_keys=0, sample_secret_enc=None)
    with pytest.raises(SecretKeyError, match="OMIXA_SECRET_KEY is not set"):
        check_signing_setup(SecurityConfig(require_signature=True), None, none)
    with pytest.raises(SecretKeyError, match="2 live key"):
        check_signing_setup(SecurityConfig(), None, SigningSummary(required_keys=2, sample_secret_enc=None))
    with pytest.raises(SecretKeyError, match="does not decrypt"):
        check_signing_setup(
            SecurityConfig(),
            SecretBox([Fernet.generate_key()]),
            SigningSummary(required_keys=0, sample_secret_enc=BOX.encrypt(SECRET)),
        )
    check_signing_setup(SecurityConfig(), None, none)
    check_signing_setup(
        SecurityConfig(require_signature=True),
        BOX,
        SigningSummary(required_keys=1, sample_secret_enc=BOX.encrypt(SECRET)),
    )


@PROPERTY
@given(path=PATHS, query=QUERIES, body=BODIES)
def test_the_httpx_signer_signs_what_goes_on_the_wire(path, query, body):
    request = httpx.Request(
        "POST", "http://127.0.0.1:9/" + path.lstrip("/") + ("?" + query if query else "?"), content=body
    )
    flow = OmixaSigner(SECRET, clock=lambda: NOW).auth_flow(request)
    signed = next(flow)
    assert len(signed.headers["X-Omixa-Nonce"]) == 24  # always a nonce
    tgt = signed.url.raw_path.removesuffix(b"?")
    sent = {name: signed.headers[name] for name in ("X-Omixa-Timestamp", "X-Omixa-Nonce", "X-Omixa-Signature")}
    check(verifier(), key_record(), sent, "POST", tgt, body)
    assert SECRET not in repr(OmixaSigner(SECRET))


def test_security_config_from_the_file_and_the_environment(monkeypatch):
    raw = {
        "security": {
            "require_signature": True,
            "signature_window_seconds": 60,
            "replay_cache_size": 10,
            "secret_grace_seconds": 0,
        }
    }
    assert structure_config(raw, base_dir=Path(".")).security == SecurityConfig(
        require_signature=True, signature_window_seconds=60, replay_cache_size=10, secret_grace_seconds=0.0
    )
    monkeypatch.setenv("OMIXA_REQUIRE_SIGNATURE", "off")
    monkeypatch.setenv("OMIXA_SIGNATURE_WINDOW_SECONDS", "30")
    security = structure_config(raw, base_dir=Path(".")).security
    assert (security.require_signature, security.signature_window_seconds) == (False, 30)
    for name, value, message in [
        ("OMIXA_SIGNATURE_WINDOW_SECONDS", "0", "OMIXA_SIGNATURE_WINDOW_SECONDS: must be > 0"),
        ("OMIXA_SIGNATURE_WINDOW_SECONDS", "5m", "OMIXA_SIGNATURE_WINDOW_SECONDS: expected an integer"),
        ("OMIXA_REQUIRE_SIGNATURE", "sure", "OMIXA_REQUIRE_SIGNATURE: expected true or false"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=message):
            structure_config({}, base_dir=Path("."))
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="security.require_signature: expected true or false"):
        structure_config({"security": {"require_signature": "yes"}}, base_dir=Path("."))
    with pytest.raises(ConfigError, match="security.replay_cache: unknown key"):
        structure_config({"security": {"replay_cache": 5}}, base_dir=Path("."))
