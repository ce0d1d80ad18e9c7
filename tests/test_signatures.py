"""Request signatures, property-based: the verifier against the shipped signer and against an
HMAC built by hand from the documented string.

Real objects throughout (a real Fernet server key, real records); no gateway here: the end-to-end
tests are in test_signing_e2e.py. Malformed headers, secrets, start-up checks, the httpx signer
and the config are in test_signatures_setup.py.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from signature_helpers import (
    BODIES,
    BOX,
    METHODS,
    NONCES,
    NOW,
    OFFSETS,
    PATHS,
    PROPERTY,
    QUERIES,
    SECRET,
    WINDOW,
    check,
    key_record,
    target,
    verifier,
)

from omixa.engine.config import SecurityConfig
from omixa.engine.errors import InvalidSignature, MissingSignature, ReplayedRequest, StaleTimestamp
from omixa.engine.signatures import MAX_FUTURE_SKEW, ReplayCache, SignatureVerifier
from omixa_client import sign, signature_headers, signed_message


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
