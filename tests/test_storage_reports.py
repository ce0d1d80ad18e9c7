"""Storage for the wallet and usage API, on both backends: idempotent top-ups across two
Storage instances (as two processes), ledger pages, request-log filters and cursors, rollups
maintained with the logs, and recovering the holds of a process that is gone."""

from __future__ import annotations

import datetime as dt
import json

import attrs
import pytest
import trio
from storage_helpers import USD, _later, funded_account, request_log

from omixa.storage import (
    FinalizeHold,
    HoldContext,
    IdempotencyConflict,
    Instance,
    NotFound,
    RequestLog,
    RequestLogFilter,
    latency_bin_upper,
    open_storage,
)
from omixa.storage._common import latency_bin, log_from_hold, log_to_json

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


async def test_top_up_with_a_key_credits_once_across_processes(storage, database_url, aio_loop):
    account = await funded_account(storage, 0)
    results = []
    async with open_storage(database_url, loop=aio_loop) as other:

        async def top_up(store):
            results.append(await store.credit_top_up(account.id, 5 * USD, idempotency_key="k1"))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(top_up, (storage, other)[i % 2])
    assert sum(not r.replayed for r in results) == 1
    assert len({r.entry for r in results}) == 1
    assert (await storage.get_wallet(account.id)).balance == 5 * USD
    with pytest.raises(IdempotencyConflict):
        await storage.credit_top_up(account.id, 6 * USD, idempotency_key="k1")
    # Keys are per account.
    second = await funded_account(storage, 0)
    assert not (await storage.credit_top_up(second.id, 1 * USD, idempotency_key="k1")).replayed
    with pytest.raises(NotFound):
        await storage.credit_top_up("acct_missing", USD, idempotency_key="k2")
    with pytest.raises(ValueError):
        await storage.credit_top_up(account.id, 0)
    assert await storage.verify_ledger() == []


async def test_ledger_pages_newest_first(storage):
    account = await funded_account(storage, 0)
    for i in range(1, 6):
        await storage.top_up(account.id, i)
    everything = await storage.list_ledger(account.id, limit=10)
    assert [e.amount for e in everything] == [5, 4, 3, 2, 1]
    page = await storage.list_ledger(account.id, limit=2, before_id=everything[1].id)
    assert [e.amount for e in page] == [3, 2]
    assert await storage.get_ledger_entry(account.id, everything[0].id) == everything[0]
    other = await funded_account(storage, 0)
    assert await storage.get_ledger_entry(other.id, everything[0].id) is None


async def test_request_log_filters_and_cursor(storage):
    logs = [
        request_log(
            f"req_{i}",
            account_id="acct_a",
            created_at=T0 + dt.timedelta(minutes=i),
            model="gpt-4o" if i % 3 == 0 else "gpt-4o-mini",
            status="ok" if i % 2 == 0 else "upstream_error",
            key_id="key_1" if i < 5 else "key_2",
        )
        for i in range(10)
    ] + [request_log("req_b", account_id="acct_b", created_at=T0, key_id="key_b")]
    # Two logs in the same microsecond: the id breaks the tie.
    logs.append(request_log("req_9z", account_id="acct_a", created_at=T0 + dt.timedelta(minutes=9)))
    await storage.insert_request_logs(logs)

    def query(**kw):
        return storage.list_request_logs(RequestLogFilter(account_id="acct_a", limit=kw.pop("limit", 50), **kw))

    ids = [r.id for r in await query()]
    assert ids == ["req_9z", "req_9", "req_8", "req_7", "req_6", "req_5", "req_4", "req_3", "req_2", "req_1", "req_0"]
    paged, before = [], None
    while True:
        page = await query(limit=3, before=before)
        paged += [r.id for r in page]
        if len(page) < 3:
            break
        before = (page[-1].created_at, page[-1].id)
    assert paged == ids
    assert [r.id for r in await query(model="gpt-4o")] == ["req_9", "req_6", "req_3", "req_0"]
    assert [r.id for r in await query(status="upstream_error", model="gpt-4o")] == ["req_9", "req_3"]
    window = await query(since=T0 + dt.timedelta(minutes=2), until=T0 + dt.timedelta(minutes=5))
    assert [r.id for r in window] == ["req_4", "req_3", "req_2"]
    # By key, alone and with the other filters; another account's key matches nothing.
    assert [r.id for r in await query(key_id="key_1")] == ["req_4", "req_3", "req_2", "req_1", "req_0"]
    assert [r.id for r in await query(key_id="key_2", model="gpt-4o")] == ["req_9", "req_6"]
    assert [r.id for r in await query(key_id="key_1", status="upstream_error", limit=1)] == ["req_3"]
    assert [r.id for r in await query(key_id="key_1", before=(T0 + dt.timedelta(minutes=3), "req_3"))] == [
        "req_2",
        "req_1",
        "req_0",
    ]
    assert await query(key_id="key_b") == []


async def test_rollups_follow_the_logs_and_never_count_twice(storage):
    hour2 = T0 + dt.timedelta(hours=1)
    logs = [
        request_log("req_1", account_id="acct_a", created_at=T0, latency_ms=100, cost=10),
        request_log("req_2", account_id="acct_a", created_at=T0, latency_ms=300, cost=20, status="client_closed"),
        request_log("req_3", account_id="acct_a", created_at=hour2, latency_ms=50, cost=5, status="upstream_error"),
        request_log("req_4", account_id="acct_a", created_at=hour2, model="gpt-4o", cost=7),
        request_log("req_5", account_id="acct_b", created_at=T0, cost=1000),
        request_log("req_6", account_id="acct_a", created_at=T0, latency_ms=100, cost=1),
    ]
    await storage.insert_request_logs(logs[:3])
    await storage.insert_request_logs(logs)  # a retried batch plus new rows
    day = await storage.usage_rollups(
        "acct_a", granularity="day", since=T0 - dt.timedelta(days=1), until=T0 + dt.timedelta(days=1)
    )
    assert [(r.model, r.key_id, r.requests, r.cost) for r in day] == [
        ("gpt-4o", "key_x", 1, 7),
        ("gpt-4o-mini", "key_x", 4, 36),
    ]
    mini = day[1]
    assert (mini.errors, mini.client_closed) == (1, 1)
    assert mini.prompt_tokens == 4 * logs[0].prompt_tokens
    assert mini.latency_ms_sum == 550
    # req_6 lands in req_1's bin, written by an earlier batch: the counts add up.
    assert mini.latency_bins == {latency_bin(100): 2, latency_bin(300): 1, latency_bin(50): 1}
    hours = await storage.usage_rollups(
        "acct_a",
        granularity="hour",
        since=T0 - dt.timedelta(hours=1),
        until=T0 + dt.timedelta(hours=3),
        model="gpt-4o-mini",
    )
    assert [(r.bucket_start, r.requests) for r in hours] == [(T0.replace(minute=0), 3), (hour2.replace(minute=0), 1)]
    with pytest.raises(ValueError):
        await storage.usage_rollups("acct_a", granularity="week", since=T0, until=hour2)


@pytest.mark.parametrize("latency", [0, 1, 2, 3, 9, 10, 11, 99, 100, 101, 999, 12_345, 3_600_000])
def test_latency_bins_bound_within_ten_percent(latency):
    upper = latency_bin_upper(latency_bin(latency))
    assert latency <= upper <= max(latency * 1.1 + 1, 1)


async def test_recovering_an_instance_voids_its_holds_and_logs_them(storage):
    account = await funded_account(storage, 10 * USD)
    now = dt.datetime.now(UTC)
    await storage.register_instance(Instance(id="inst_dead", host="h", pid=1, started_at=now, heartbeat_at=now))
    await storage.register_instance(Instance(id="inst_live", host="h", pid=2, started_at=now, heartbeat_at=now))
    dead = HoldContext(instance_id="inst_dead", key_id="key_1", model="gpt-4o", provider="azure", stream=True)
    live = HoldContext(instance_id="inst_live", key_id="key_1", model="gpt-4o", provider="azure", stream=False)
    await storage.create_hold(account_id=account.id, request_id="req_d1", amount=USD, expires_at=_later(), context=dead)
    h2 = await storage.create_hold(
        account_id=account.id, request_id="req_d2", amount=USD, expires_at=_later(), context=dead
    )
    await storage.create_hold(account_id=account.id, request_id="req_l", amount=USD, expires_at=_later(), context=live)
    await storage.settle_hold(h2.id, 100)  # finished before the process died
    # Taken for stale, but it heartbeats before the recovery's transaction: nothing happens.
    assert await storage.heartbeat_instance(Instance(id="inst_dead", host="h", pid=1, started_at=now, heartbeat_at=now))
    assert await storage.recover_instance("inst_dead", now, stale_after=60) == []
    assert (await storage.get_wallet(account.id)).locked == 2 * USD
    logs = await storage.recover_instance("inst_dead", now + dt.timedelta(seconds=3))
    assert [(log.id, log.status, log.cost, log.stream, log.model, log.key_id) for log in logs] == [
        ("req_d1", "interrupted", 0, True, "gpt-4o", "key_1")
    ]
    assert 2900 <= logs[0].latency_ms <= 3000  # from the hold to the recovery
    assert await storage.get_request_log("req_d1") == logs[0]
    [rollup] = await storage.usage_rollups(
        account.id, granularity="hour", since=now - dt.timedelta(hours=1), until=now + dt.timedelta(hours=1)
    )
    assert (rollup.key_id, rollup.model, rollup.requests, rollup.errors, rollup.cost) == ("key_1", "gpt-4o", 1, 1, 0)
    wallet = await storage.get_wallet(account.id)
    assert (wallet.balance, wallet.locked) == (10 * USD - 100, USD)  # only the live hold remains
    assert [i.id for i in await storage.list_instances()] == ["inst_live"]
    # A heartbeat of a recovered instance says so, and registers it again.
    live_again = Instance(id="inst_dead", host="h", pid=1, started_at=now, heartbeat_at=now)
    assert not await storage.heartbeat_instance(live_again)
    assert [i.id for i in await storage.list_instances()] == ["inst_dead", "inst_live"]
    assert all(0 <= i.heartbeat_age < 5 for i in await storage.list_instances())
    assert await storage.recover_instance("inst_dead", now) == []  # once (the row is back, no holds)
    assert await storage.verify_ledger() == []


async def test_a_settled_requests_log_kept_with_its_hold_is_written_by_recovery(storage):
    """The process settled (the charge is final) and died before its usage aggregator wrote
    the log: recovering it writes the log from the hold, with the hold's charge as its cost
    and the rollups to match. A log the aggregator did write is cleared from its hold and
    never written twice."""
    account = await funded_account(storage, 10 * USD)
    now = dt.datetime.now(UTC)
    await storage.register_instance(Instance(id="inst_gone", host="h", pid=1, started_at=now, heartbeat_at=now))
    context = HoldContext(instance_id="inst_gone", key_id="key_1", model="gpt-4o", provider="azure", stream=True)

    def log(request_id: str, **extra) -> RequestLog:
        fields = dict(
            id=request_id,
            account_id=account.id,
            key_id="key_1",
            model="gpt-4o",
            provider="azure",
            deployment="eastus-1",
            region="eastus",
            status="ok",
            stream=True,
            prompt_tokens=11,
            completion_tokens=22,
            reasoning_tokens=3,
            cached_tokens=4,
            cost=0,
            latency_ms=321,
            ttft_ms=45,
            created_at=now,
        )
        return RequestLog(**{**fields, **extra})

    holds = {}
    for request_id in ("req_written", "req_lost", "req_released", "req_batched"):
        holds[request_id] = await storage.create_hold(
            account_id=account.id, request_id=request_id, amount=USD, expires_at=_later(), context=context
        )
    await storage.settle_hold(holds["req_written"].id, 500, log=log("req_written"))
    await storage.settle_hold(holds["req_lost"].id, 700, log=log("req_lost", upstream_request_id="apim-of-lost"))
    await storage.void_hold(holds["req_released"].id, log=log("req_released", status="upstream_error"))
    # A wallet actor's group commit keeps the log too.
    await storage.apply_wallet_ops([FinalizeHold(hold_id=holds["req_batched"].id, charge=900, log=log("req_batched"))])
    # The aggregator wrote one of them before the process died.
    await storage.insert_request_logs([log("req_written", cost=500)], hold_ids=[holds["req_written"].id])

    written = await storage.recover_instance("inst_gone", now)
    assert sorted((entry.id, entry.cost, entry.status) for entry in written) == [
        ("req_batched", 900, "ok"),
        ("req_lost", 700, "ok"),
        ("req_released", 0, "upstream_error"),
    ]
    lost = await storage.get_request_log("req_lost")
    # Every field as the process would have written it, the upstream's id of the call too.
    assert lost == log("req_lost", cost=700, upstream_request_id="apim-of-lost")
    rollups = await storage.usage_rollups(
        account.id, granularity="day", since=now - dt.timedelta(days=1), until=now + dt.timedelta(days=1)
    )
    assert sum(r.cost for r in rollups) == 500 + 700 + 900 and sum(r.requests for r in rollups) == 4
    assert {(r.model, r.key_id) for r in rollups} == {("gpt-4o", "key_1")}  # the recovered ones by key too
    # Nothing is left to write: a second recovery of the same id writes nothing.
    await storage.register_instance(Instance(id="inst_gone", host="h", pid=1, started_at=now, heartbeat_at=now))
    assert await storage.recover_instance("inst_gone", now) == []
    assert await storage.verify_ledger() == []


def test_a_log_kept_by_a_hold_before_the_upstream_id_was_recorded_still_recovers():
    """A hold whose copy of the log was written by a release before migration 0009 (no
    upstream_request_id in it) or 0015 (no error_message) is read back with None for them,
    not refused; one written now keeps both."""
    entry = request_log(
        "req_old", account_id="acct_1", key_id="key_1", model="gpt-4o", stream=True, status="upstream_error",
        error_message="Upstream or internal processing failure.",
    )  # fmt: skip
    kept = json.loads(log_to_json(entry))
    hold = {"request_id": "req_old", "account_id": "acct_1", "key_id": "key_1", "model": "gpt-4o",
            "stream": True, "charged": 7, "log": json.dumps(kept)}  # fmt: skip
    assert log_from_hold(hold) == attrs.evolve(entry, cost=7)  # what a hold keeps now
    assert kept.pop("upstream_request_id") == entry.upstream_request_id
    assert kept.pop("error_message") == entry.error_message
    hold["log"] = json.dumps(kept)
    assert log_from_hold(hold) == attrs.evolve(entry, cost=7, upstream_request_id=None, error_message=None)
