"""The signing columns of api_keys on both backends: create, find, rotate, summary."""

from __future__ import annotations

import datetime as dt

import pytest

from omixa.storage import NotFound


async def test_rotation_keeps_the_replaced_secret_only_with_a_grace_period(storage):
    account = await storage.create_account("keys@example.com")
    created = await storage.create_api_key(
        account_id=account.id,
        key_hash="a" * 64,
        prefix="omx_live_aaaaaa",
        rpm=None,
        signature_required=True,
        signing_secret_enc="token-1",
    )
    found = await storage.find_api_key("a" * 64)
    assert found == created
    assert (found.signature_required, found.signing_secret_enc, found.previous_secret_enc) == (True, "token-1", None)

    until = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    rotated = await storage.rotate_signing_secret(created.id, "token-2", previous_expires_at=until)
    assert (rotated.signing_secret_enc, rotated.previous_secret_enc) == ("token-2", "token-1")
    assert rotated.previous_secret_expires_at == until
    assert await storage.find_api_key("a" * 64) == rotated

    dropped = await storage.rotate_signing_secret(created.id, "token-3", previous_expires_at=None)
    assert (dropped.signing_secret_enc, dropped.previous_secret_enc, dropped.previous_secret_expires_at) == (
        "token-3",
        None,
        None,
    )
    with pytest.raises(NotFound):
        await storage.rotate_signing_secret("key_nope", "t", previous_expires_at=None)
    assert "token" not in repr(dropped)  # encrypted or not, secrets stay out of reprs


async def test_a_first_secret_has_no_previous_one_and_the_summary_counts_live_keys(storage):
    account = await storage.create_account("keys@example.com")
    bare = await storage.create_api_key(account_id=account.id, key_hash="b" * 64, prefix="omx_live_bbbbbb", rpm=None)
    assert (bare.signature_required, bare.signing_secret_enc) == (False, None)
    summary = await storage.signing_summary()
    assert (summary.required_keys, summary.sample_secret_enc) == (0, None)

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    first = await storage.rotate_signing_secret(bare.id, "token-b", previous_expires_at=later)
    assert (first.previous_secret_enc, first.previous_secret_expires_at) == (None, None)

    strict = await storage.create_api_key(
        account_id=account.id,
        key_hash="c" * 64,
        prefix="omx_live_cccccc",
        rpm=None,
        signature_required=True,
        signing_secret_enc="token-c",
    )
    summary = await storage.signing_summary()
    assert summary.required_keys == 1 and summary.sample_secret_enc in ("token-b", "token-c")
    await storage.revoke_api_key(strict.id)
    summary = await storage.signing_summary()
    assert (summary.required_keys, summary.sample_secret_enc) == (0, "token-b")
