"""Signatures around the verifier: malformed headers, secret rotation, keys and servers
without what they need, the server key and start-up checks, the signer (httpx and httpx2),
and the [security] config."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import httpx2
import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis.strategies import booleans
from signature_helpers import (
    BODIES,
    BOX,
    NOW,
    PATHS,
    PROPERTY,
    QUERIES,
    SECRET,
    check,
    key_record,
    verifier,
)

from omixa.engine.config import ConfigError, SecurityConfig
from omixa.engine.config_loader import structure_config
from omixa.engine.errors import InvalidSignature, MissingSignature, ReplayedRequest, ServiceUnavailable
from omixa.engine.secretbox import SecretBox, SecretKeyError, generate_signing_secret, secret_box_from_env
from omixa.engine.signatures import SignatureVerifier, check_signing_setup
from omixa.storage import SigningSummary
from omixa_client import OmixaSigner, signature_headers


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


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["httpx", "httpx2"])
@PROPERTY
@given(path=PATHS, query=QUERIES, body=BODIES, streamed=booleans())
def test_the_signer_signs_what_goes_on_the_wire(library, path, query, body, streamed):
    """For either library's requests, with the body as bytes or as a stream not yet read
    (the client's sync flow reads it, as a client does)."""
    request = library.Request(
        "POST",
        "http://127.0.0.1:9/" + path.lstrip("/") + ("?" + query if query else "?"),
        content=iter([body[:3], body[3:]]) if streamed else body,
    )
    flow = OmixaSigner(SECRET, clock=lambda: NOW).sync_auth_flow(request)
    signed = next(flow)
    assert signed.content == body
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
