"""The wallet side of the storage interface, against both real backends (see conftest.py):
top-ups, holds, group commits, settles and voids, expiry, the ledger's invariants, and
concurrent and cancelled calls.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
import trio
from storage_helpers import USD, UTC, _later, funded_account, hold_then_settle, raw, wallet_of

from omixa.storage import (
    FinalizeHold,
    HoldContext,
    KeyRevoked,
    NewHold,
    NotFound,
    Settlement,
    open_storage,
)

# -- wallet -----------------------------------------------------------------------------------


async def test_top_up(storage):
    account = await storage.create_account("w@example.com")
    wallet = await storage.top_up(account.id, 5 * USD, note="card")
    assert (wallet.balance, wallet.locked, wallet.available) == (5 * USD, 0, 5 * USD)
    wallet = await storage.top_up(account.id, 1)
    assert wallet.balance == 5 * USD + 1
    assert await storage.get_wallet(account.id) == wallet
    entries = await storage.ledger_entries(account.id)
    assert [(e.type, e.amount, e.balance_after, e.locked_after) for e in entries] == [
        ("top_up", 5 * USD, 5 * USD, 0),
        ("top_up", 1, 5 * USD + 1, 0),
    ]
    assert entries[0].id < entries[1].id
    assert entries[0].created_at.tzinfo is not None


@pytest.mark.parametrize("amount", [0, -1, 2**63])
async def test_top_up_refuses_bad_amounts(storage, amount):
    account = await storage.create_account("w@example.com")
    with pytest.raises(ValueError):
        await storage.top_up(account.id, amount)
    assert await storage.ledger_entries(account.id) == []


async def test_top_up_unknown_account(storage):
    with pytest.raises(NotFound):
        await storage.top_up("acct_missing", 1)


async def test_hold_success(storage):
    account = await funded_account(storage, 100)
    # Any timezone in; timezone-aware UTC out.
    expires = _later().astimezone(dt.timezone(dt.timedelta(hours=2)))
    hold = await storage.create_hold(account_id=account.id, request_id="req_1", amount=60, expires_at=expires)
    assert hold.id.startswith("hold_") and hold.amount == 60 and hold.request_id == "req_1"
    assert hold.expires_at == expires and hold.expires_at.utcoffset() == dt.timedelta(0)
    assert hold.created_at.utcoffset() == dt.timedelta(0)
    wallet = await storage.get_wallet(account.id)
    assert (wallet.balance, wallet.locked, wallet.available) == (100, 60, 40)
    last = (await storage.ledger_entries(account.id))[-1]
    assert (last.type, last.amount, last.balance_after, last.locked_after) == ("hold", 60, 100, 60)
    assert (last.hold_id, last.request_id) == (hold.id, "req_1")


async def test_hold_refused_writes_nothing(storage, database_url, aio_loop):
    account = await funded_account(storage, 100)
    await storage.create_hold(account_id=account.id, request_id="r1", amount=70, expires_at=_later())
    before = await storage.ledger_entries(account.id)
    refused = await storage.create_hold(account_id=account.id, request_id="r2", amount=31, expires_at=_later())
    assert refused is None
    assert await storage.ledger_entries(account.id) == before
    assert await raw(database_url, aio_loop, "SELECT request_id FROM holds") == [("r1",)]
    assert (await storage.get_wallet(account.id)).locked == 70
    # Exactly the available amount still fits.
    assert await storage.create_hold(account_id=account.id, request_id="r3", amount=30, expires_at=_later())


async def test_hold_errors(storage):
    account = await funded_account(storage, 100)
    with pytest.raises(NotFound):
        await storage.create_hold(account_id="acct_missing", request_id="r", amount=1, expires_at=_later())
    for amount in (0, -5):
        with pytest.raises(ValueError):
            await storage.create_hold(account_id=account.id, request_id="r", amount=amount, expires_at=_later())
    with pytest.raises(ValueError):
        await storage.create_hold(account_id=account.id, request_id="r", amount=1, expires_at=dt.datetime.now())
    assert len(await storage.ledger_entries(account.id)) == 1


async def test_group_commit_applies_steps_in_order_and_all_or_nothing(storage, database_url, aio_loop):
    account = await funded_account(storage, 100)
    first = await storage.create_hold(account_id=account.id, request_id="r0", amount=40, expires_at=_later())

    def new(request_id: str, amount: int) -> NewHold:
        return NewHold(account_id=account.id, request_id=request_id, amount=amount, expires_at=_later())

    # In order: the settle frees 30 of the 40, so the second 45 fits and the 25 does not.
    held, settled, second, refused = await storage.apply_wallet_ops(
        [new("r1", 45), FinalizeHold(hold_id=first.id, charge=10), new("r2", 45), new("r3", 25)]
    )
    assert held.amount == 45 and held.request_id == "r1"
    assert isinstance(settled, Settlement) and (settled.charged, settled.released) == (10, 30)
    assert second.amount == 45 and refused is None
    wallet = await storage.get_wallet(account.id)
    assert (wallet.balance, wallet.locked) == (90, 90)
    before = await storage.ledger_entries(account.id)
    # A failing step rolls back the steps before it: nothing of this batch is left.
    with pytest.raises(NotFound):
        await storage.apply_wallet_ops(
            [FinalizeHold(hold_id=held.id, void=True), new("r4", 1), FinalizeHold(hold_id="hold_missing")]
        )
    assert await storage.ledger_entries(account.id) == before
    assert (await storage.get_wallet(account.id)).locked == 90
    rows = await raw(database_url, aio_loop, "SELECT request_id FROM holds ORDER BY request_id")
    assert rows == [("r0",), ("r1",), ("r2",)]
    voided, again = await storage.apply_wallet_ops(
        [FinalizeHold(hold_id=held.id, void=True), FinalizeHold(hold_id=held.id, charge=5)]
    )
    assert (voided.released, voided.already_final, again.already_final, again.charged) == (45, False, True, 0)
    assert await storage.verify_ledger() == []


async def test_a_batch_writes_exactly_what_its_steps_write_one_by_one(storage):
    """On PostgreSQL a batch runs in the function of migration 0005 and a lone step in its
    own statement: the two must not drift apart. The same steps, applied one by one on one
    account and as one batch on another, give the same results, ledger and wallet."""

    async def run(batched: bool) -> tuple[list, list, tuple[int, int]]:
        account = await funded_account(storage, 100)
        key = await storage.create_api_key(
            account_id=account.id, key_hash=("b" if batched else "s") * 64, prefix="omx_live_kkkkkk", rpm=None
        )
        first = await storage.create_hold(account_id=account.id, request_id="r1", amount=40, expires_at=_later())
        second = await storage.create_hold(account_id=account.id, request_id="r2", amount=20, expires_at=_later())
        context = HoldContext(key_id=key.id, model="gpt-4o-mini", provider="azure", stream=True)
        steps = [
            NewHold(account_id=account.id, request_id="r3", amount=30, expires_at=_later(), context=context),
            FinalizeHold(hold_id=first.id, charge=10),
            FinalizeHold(hold_id=second.id, charge=500),  # more than held: charged the hold
            NewHold(account_id=account.id, request_id="r4", amount=200, expires_at=_later()),  # unfunded
            FinalizeHold(hold_id=first.id, void=True),  # already final
            NewHold(account_id=account.id, request_id="r5", amount=40, expires_at=_later()),  # exactly what is left
        ]
        if batched:
            results = await storage.apply_wallet_ops(steps)
        else:
            results = [(await storage.apply_wallet_ops([step]))[0] for step in steps]
        shown: list[Any] = []
        for result in results:
            if isinstance(result, Settlement):
                wallet = result.wallet
                shown.append((result.charged, result.released, result.already_final, wallet.balance, wallet.locked))
            else:
                shown.append(None if result is None else (result.request_id, result.amount))
        ledger = [(e.type, e.amount, e.balance_after, e.locked_after, e.request_id)
                  for e in await storage.ledger_entries(account.id)]  # fmt: skip
        wallet = await storage.get_wallet(account.id)
        return shown, ledger, (wallet.balance, wallet.locked)

    one_by_one, batched = await run(batched=False), await run(batched=True)
    assert one_by_one == batched
    shown, ledger, wallet = batched
    assert shown[3] is None and shown[4][2] is True and shown[2][:2] == (20, 0)
    assert shown[5] == ("r5", 40) and wallet == (70, 70)
    assert await storage.verify_ledger() == []


async def test_a_hold_for_a_revoked_key_is_refused(storage):
    account = await funded_account(storage, 100)
    key = await storage.create_api_key(account_id=account.id, key_hash="k" * 64, prefix="omx_live_kkkkkk", rpm=None)
    context = HoldContext(key_id=key.id, model="gpt-4o-mini")
    assert await storage.create_hold(
        account_id=account.id, request_id="r1", amount=10, expires_at=_later(), context=context
    )
    assert await storage.revoke_api_key(key.id)
    before = await storage.ledger_entries(account.id)
    with pytest.raises(KeyRevoked):
        await storage.create_hold(
            account_id=account.id, request_id="r2", amount=10, expires_at=_later(), context=context
        )
    with pytest.raises(KeyRevoked):
        await storage.apply_wallet_ops(
            [NewHold(account_id=account.id, request_id="r3", amount=1, expires_at=_later()),
             NewHold(account_id=account.id, request_id="r4", amount=1, expires_at=_later(), context=context)]
        )  # fmt: skip
    assert await storage.ledger_entries(account.id) == before
    assert (await storage.get_wallet(account.id)).locked == 10


@pytest.mark.parametrize(("charge", "charged", "released"), [(30, 30, 70), (150, 100, 0), (100, 100, 0), (0, 0, 100)])
async def test_settle(storage, charge, charged, released):
    account = await funded_account(storage, 1000)
    hold = await storage.create_hold(account_id=account.id, request_id="req_s", amount=100, expires_at=_later())
    settlement = await storage.settle_hold(hold.id, charge)
    assert settlement.hold_id == hold.id and not settlement.already_final
    assert (settlement.charged, settlement.released) == (charged, released)
    assert settlement.wallet == wallet_of(account.id, 1000 - charged, 0)
    assert await storage.get_wallet(account.id) == settlement.wallet
    rows = [
        (e.type, e.amount, e.balance_after, e.locked_after, e.hold_id, e.request_id)
        for e in (await storage.ledger_entries(account.id))[2:]
    ]
    expected = []
    if charged:
        expected.append(("charge", charged, 1000 - charged, 100 - charged, hold.id, "req_s"))
    if released:
        expected.append(("release", released, 1000 - charged, 0, hold.id, "req_s"))
    assert rows == expected
    assert await storage.verify_ledger() == []


async def test_void(storage, database_url, aio_loop):
    account = await funded_account(storage, 1000)
    hold = await storage.create_hold(account_id=account.id, request_id="req_v", amount=400, expires_at=_later())
    settlement = await storage.void_hold(hold.id)
    assert (settlement.charged, settlement.released, settlement.already_final) == (0, 400, False)
    assert settlement.wallet == wallet_of(account.id, 1000, 0)
    last = (await storage.ledger_entries(account.id))[-1]
    assert (last.type, last.amount, last.balance_after, last.locked_after) == ("release", 400, 1000, 0)
    states = await raw(database_url, aio_loop, "SELECT state, charged FROM holds")
    assert states == [("voided", 0)]


async def test_finalize_is_idempotent(storage, database_url, aio_loop):
    account = await funded_account(storage, 1000)
    hold = await storage.create_hold(account_id=account.id, request_id="r", amount=100, expires_at=_later())
    first = await storage.settle_hold(hold.id, 40)
    entries = await storage.ledger_entries(account.id)
    for again in (await storage.settle_hold(hold.id, 90), await storage.void_hold(hold.id)):
        assert (again.charged, again.released, again.already_final) == (0, 0, True)
        assert again.wallet == first.wallet
    assert await storage.ledger_entries(account.id) == entries
    assert await raw(database_url, aio_loop, "SELECT state, charged FROM holds") == [("posted", 40)]


async def test_concurrent_settle_and_void_finalize_once(storage, database_url, aio_loop):
    account = await funded_account(storage, 10_000)
    holds = [
        await storage.create_hold(account_id=account.id, request_id=f"r{i}", amount=100, expires_at=_later())
        for i in range(20)
    ]
    results = []

    async def finalize(hold, void):
        if void:
            results.append(await storage.void_hold(hold.id))
        else:
            results.append(await storage.settle_hold(hold.id, 60))

    async with trio.open_nursery() as nursery:
        for hold in holds:
            for void in (False, True, False):
                nursery.start_soon(finalize, hold, void)
    for hold in holds:
        mine = [r for r in results if r.hold_id == hold.id]
        assert sorted(r.already_final for r in mine) == [False, True, True]
    rows = await raw(database_url, aio_loop, "SELECT type, COUNT(*) FROM ledger GROUP BY type")
    counts = dict(rows)
    assert counts["hold"] == 20 and counts["release"] == 20
    assert await storage.verify_ledger() == []


async def test_finalize_errors(storage):
    with pytest.raises(NotFound):
        await storage.settle_hold("hold_missing", 1)
    with pytest.raises(NotFound):
        await storage.void_hold("hold_missing")
    account = await funded_account(storage, 100)
    hold = await storage.create_hold(account_id=account.id, request_id="r", amount=10, expires_at=_later())
    with pytest.raises(ValueError):
        await storage.settle_hold(hold.id, -1)
    assert (await storage.get_wallet(account.id)).locked == 10


async def test_expire_holds(storage, database_url, aio_loop):
    account = await funded_account(storage, 1000)
    other = await funded_account(storage, 1000)
    now = dt.datetime.now(UTC)
    expired = now - dt.timedelta(seconds=1)
    past = [
        await storage.create_hold(account_id=acct.id, request_id=f"old{i}", amount=10 + i, expires_at=expired)
        for i, acct in enumerate([account, account, other])
    ]
    future = await storage.create_hold(
        account_id=account.id, request_id="new", amount=50, expires_at=now + dt.timedelta(hours=1)
    )
    settled = await storage.create_hold(account_id=account.id, request_id="done", amount=5, expires_at=expired)
    await storage.settle_hold(settled.id, 5)

    assert await storage.expire_holds(now) == 3
    assert await storage.get_wallet(account.id) == wallet_of(account.id, 995, 50)
    assert await storage.get_wallet(other.id) == wallet_of(other.id, 1000, 0)
    releases = [e for e in await storage.ledger_entries(account.id) if e.type == "release"]
    assert sorted(e.hold_id for e in releases) == sorted(h.id for h in past[:2])
    states = dict(await raw(database_url, aio_loop, "SELECT request_id, state FROM holds"))
    assert states == {"old0": "voided", "old1": "voided", "old2": "voided", "new": "pending", "done": "posted"}
    assert await storage.expire_holds(now) == 0
    assert (await storage.void_hold(past[0].id)).already_final
    assert (await storage.settle_hold(future.id, 50)).charged == 50
    assert await storage.verify_ledger() == []
    with pytest.raises(ValueError):
        await storage.expire_holds(dt.datetime.now())


# -- ledger verification ----------------------------------------------------------------------


async def test_verify_ledger_clean_after_a_mix(storage):
    accounts = [await funded_account(storage, 10_000) for _ in range(3)]
    empty = await storage.create_account("empty@example.com")
    rng = random.Random(7)
    open_holds = []
    for i in range(60):
        account = rng.choice(accounts)
        step = rng.random()
        if step < 0.15:
            await storage.top_up(account.id, rng.randint(1, 500))
        elif step < 0.6 or not open_holds:
            hold = await storage.create_hold(
                account_id=account.id,
                request_id=f"r{i}",
                amount=rng.randint(1, 900),
                expires_at=_later(rng.choice([-1, 5])),
            )
            if hold:
                open_holds.append(hold)
        elif step < 0.85:
            hold = open_holds.pop(rng.randrange(len(open_holds)))
            await storage.settle_hold(hold.id, rng.randint(0, 1000))
        else:
            await storage.void_hold(open_holds.pop(rng.randrange(len(open_holds))).id)
    await storage.expire_holds(dt.datetime.now(UTC))
    assert await storage.verify_ledger() == []
    assert await storage.get_wallet(empty.id) == wallet_of(empty.id, 0, 0)


async def test_verify_ledger_detects_tampering(storage, database_url, aio_loop):
    good = await funded_account(storage, 1000)
    bad = await funded_account(storage, 1000)
    await storage.create_hold(account_id=bad.id, request_id="r", amount=10, expires_at=_later())
    assert await storage.verify_ledger() == []
    await raw(database_url, aio_loop, f"UPDATE accounts SET balance = balance + 1 WHERE id = '{bad.id}'")
    problems = await storage.verify_ledger()
    assert problems and {p.account_id for p in problems} == {bad.id}
    assert any("balance 1001" in p.message for p in problems)
    assert any("last ledger row" in p.message for p in problems)

    await raw(database_url, aio_loop, f"UPDATE accounts SET locked = 0 WHERE id = '{good.id}'")
    await raw(database_url, aio_loop, f"UPDATE holds SET amount = 11 WHERE account_id = '{bad.id}'")
    messages = [p.message for p in await storage.verify_ledger() if p.account_id == bad.id]
    assert any("pending holds 11" in m for m in messages)


# -- concurrency and cancellation -------------------------------------------------------------


async def test_concurrent_holds_never_overdraw(storage, database_url, aio_loop):
    """100 holds at once, through two Storage instances (as two processes would have) on an
    account that covers exactly 40: the database's conditional update is the arbiter."""
    account = await funded_account(storage, 40 * 25)
    results = []

    async def hold(store, i):
        results.append(
            await store.create_hold(account_id=account.id, request_id=f"r{i}", amount=25, expires_at=_later())
        )

    async with open_storage(database_url, loop=aio_loop) as other:
        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(hold, (storage, other)[i % 2], i)
    assert sum(r is not None for r in results) == 40
    assert await storage.get_wallet(account.id) == wallet_of(account.id, 1000, 1000)
    assert len(await storage.ledger_entries(account.id)) == 1 + 40
    assert await storage.verify_ledger() == []


async def test_cancelled_calls_are_all_or_nothing(storage, database_url, aio_loop):
    """Cancel hold-then-settle at deadlines swept from 0 to a few times its duration, so
    cancellation lands before, during and between the calls; the ledger must still verify."""
    account = await funded_account(storage, 10**12)

    start = trio.current_time()
    for i in range(5):
        await hold_then_settle(storage, account, f"rwarm{i}")
    duration = (trio.current_time() - start) / 5
    outcomes = {"cancelled": 0, "completed": 0}

    async def attempt(i, deadline):
        with trio.move_on_after(deadline) as scope:
            await hold_then_settle(storage, account, f"r{i}")
        outcomes["cancelled" if scope.cancelled_caught else "completed"] += 1

    for i in range(60):  # one at a time: each cancel hits a different phase
        await attempt(i, duration * 3 * i / 60)
    async with trio.open_nursery() as nursery:  # and many at once, queued behind each other
        for i in range(60, 120):
            nursery.start_soon(attempt, i, duration * (i - 60) / 4)
    assert outcomes["cancelled"] > 0 and outcomes["completed"] > 0, outcomes

    assert await storage.verify_ledger() == []
    holds = await raw(database_url, aio_loop, "SELECT COUNT(*) FROM holds")
    hold_rows = await raw(database_url, aio_loop, "SELECT COUNT(*) FROM ledger WHERE type = 'hold'")
    assert holds == hold_rows
    # The storage is still healthy after all those cancellations.
    wallet = await storage.top_up(account.id, 1)
    assert await storage.get_wallet(account.id) == wallet
