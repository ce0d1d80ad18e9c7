"""Storage reads of the console's request log and wallet pages, on both backends: the stream
filter of request logs, the ledger rows of one request, and the balance over time."""

from __future__ import annotations

import datetime as dt

import trio
from storage_helpers import _later, funded_account, request_log

from omixa.storage import RequestLogFilter

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


async def test_request_logs_filter_by_stream_flag(storage):
    logs = [
        request_log(f"req_{i}", account_id="acct_a", created_at=T0 + dt.timedelta(minutes=i), stream=i % 3 == 0,
                    model="gpt-4o" if i < 5 else "gpt-4o-mini")
        for i in range(10)
    ]  # fmt: skip
    logs.append(request_log("req_other", account_id="acct_b", created_at=T0, stream=True))
    await storage.insert_request_logs(logs)

    async def ids(**kw):
        found = await storage.list_request_logs(RequestLogFilter(account_id="acct_a", limit=kw.pop("limit", 50), **kw))
        return [r.id for r in found]

    assert await ids(stream=True) == ["req_9", "req_6", "req_3", "req_0"]
    assert await ids(stream=False) == ["req_8", "req_7", "req_5", "req_4", "req_2", "req_1"]
    assert await ids(stream=True, model="gpt-4o") == ["req_3", "req_0"]
    assert await ids(stream=False, limit=2, before=(T0 + dt.timedelta(minutes=5), "req_5")) == ["req_4", "req_2"]
    assert len(await ids()) == 10


async def test_the_ledger_rows_of_one_request(storage):
    account = await funded_account(storage, 100)
    other = await funded_account(storage, 100)
    settled = await storage.create_hold(account_id=account.id, request_id="req_1", amount=30, expires_at=_later())
    voided = await storage.create_hold(account_id=account.id, request_id="req_2", amount=20, expires_at=_later())
    await storage.settle_hold(settled.id, 12)
    await storage.void_hold(voided.id)
    await storage.create_hold(account_id=other.id, request_id="req_1", amount=5, expires_at=_later())

    rows = await storage.request_ledger(account.id, "req_1")
    assert [(r.type, r.amount, r.balance_after, r.locked_after) for r in rows] == [
        ("hold", 30, 100, 30),
        ("charge", 12, 88, 38),
        ("release", 18, 88, 20),
    ]
    assert {r.hold_id for r in rows} == {settled.id} and all(r.account_id == account.id for r in rows)
    assert [r.type for r in await storage.request_ledger(account.id, "req_2")] == ["hold", "release"]
    assert [r.amount for r in await storage.request_ledger(other.id, "req_1")] == [5]
    assert await storage.request_ledger(account.id, "req_missing") == []
    assert await storage.request_ledger("acct_missing", "req_1") == []


async def test_balance_over_time_is_the_last_row_of_each_bucket(storage):
    account = await funded_account(storage, 0)
    assert await storage.ledger_balances(account.id, since=T0, until=_later(), step_seconds=60) == []
    await storage.top_up(account.id, 1)
    await trio.sleep(1.1)
    await storage.top_up(account.id, 2)
    await storage.top_up(account.id, 4)
    await trio.sleep(1.1)
    await storage.top_up(account.id, 8)
    first, second, third, fourth = await storage.ledger_entries(account.id)

    # The row before since opens the series; then one row per one-second bucket.
    rows = await storage.ledger_balances(account.id, since=second.created_at, until=_later(), step_seconds=1)
    assert [r.balance_after for r in rows] == [1, 7, 15]
    assert rows[0] == first and rows[1] == third and rows[2] == fourth
    # until is exclusive; one bucket (a century wide) keeps its last row only.
    century = 100 * 365 * 86400
    rows = await storage.ledger_balances(
        account.id, since=first.created_at, until=fourth.created_at, step_seconds=century
    )
    assert [r.balance_after for r in rows] == [7]
    # Nothing of another account.
    other = await funded_account(storage, 5)
    assert [
        r.balance_after for r in await storage.ledger_balances(other.id, since=T0, until=_later(), step_seconds=60)
    ] == [5]
