"""The actors on their own: wallet pool (holds, cap lowering, retirement, abandoned requesters),
router and deployment actors, usage aggregator. Real storage on both backends."""

from __future__ import annotations

import datetime as dt
import random

import attrs
import pytest
import trio
import trio.testing

from omixa.engine.catalog import load_catalog, max_cost
from omixa.engine.chat_request import parse_chat_request
from omixa.engine.config import DeploymentConfig, UsageConfig, WalletConfig
from omixa.engine.deployment import DeploymentActor
from omixa.engine.deployment_types import Slot
from omixa.engine.errors import InsufficientBalance, InvalidApiKey, NoHealthyDeployment, OmixaError, UpstreamError
from omixa.engine.mailbox import Reply
from omixa.engine.providers import SimulatorProvider
from omixa.engine.router import Router
from omixa.engine.usage import UsageAggregator
from omixa.engine.wallet import Reserved, WalletPool
from omixa.storage import HoldContext, RequestLog, Settlement

MINI = load_catalog().get("gpt-4o-mini")
assert MINI is not None  # the shipped catalog lists it
PRICES = MINI.prices


async def funded(storage, nano: int) -> str:
    account = await storage.create_account("a@example.com")
    if nano:
        await storage.top_up(account.id, nano)
    return account.id


def reserve_args(request_id: str, output_tokens: int = 100, min_output_tokens: int | None = None) -> dict:
    return dict(
        request_id=request_id,
        prompt_tokens=10,
        output_tokens=output_tokens,
        choices=1,
        prices=PRICES,
        min_output_tokens=min_output_tokens,
    )


async def test_reply_slot_reports_abandonment():
    reply: Reply[int] = Reply()
    with trio.move_on_after(0.01):
        await reply.receive()
    assert reply.send(5) is False  # the actor learns nobody listens and must undo
    assert reply.unclaimed == 5


async def test_reserve_settle_release_through_the_wallet_actor(storage):
    account = await funded(storage, 10_000_000)
    async with trio.open_nursery() as nursery:
        pool = WalletPool(storage, WalletConfig())
        await nursery.start(pool.run)
        reserved = await pool.reserve(account, **reserve_args("req_1"))
        assert reserved.output_tokens == 100
        assert reserved.hold.amount == max_cost(10, 100, PRICES)
        settled = await pool.settle(account, reserved.hold.id, 7)
        assert (settled.charged, settled.released) == (7, reserved.hold.amount - 7)
        again = await pool.release(account, reserved.hold.id)
        assert again.already_final and again.charged == 0
        pool.close()
    assert await storage.verify_ledger() == []


async def test_default_cap_is_lowered_but_a_clients_cap_is_not(storage):
    # Covers the prompt and exactly 40 output tokens.
    account = await funded(storage, max_cost(10, 40, PRICES))
    async with trio.open_nursery() as nursery:
        pool = WalletPool(storage, WalletConfig())
        await nursery.start(pool.run)
        with pytest.raises(InsufficientBalance):
            await pool.reserve(account, **reserve_args("req_client", 100, None))
        with pytest.raises(InsufficientBalance):
            await pool.reserve(account, **reserve_args("req_floor", 100, 41))
        lowered = await pool.reserve(account, **reserve_args("req_default", 100, 16))
        assert lowered.output_tokens == 40
        wallet = await storage.get_wallet(account)
        assert wallet.available == 0
        await pool.release(account, lowered.hold.id)
        pool.close()
    assert await storage.verify_ledger() == []


async def test_idle_wallet_actor_retires_and_respawns(storage):
    account = await funded(storage, 10_000_000)
    async with trio.open_nursery() as nursery:
        # Idle long enough that a stalled machine can't retire it before the check below.
        pool = WalletPool(storage, WalletConfig(idle_seconds=0.5))
        await nursery.start(pool.run)
        with trio.fail_after(30):
            first = await pool.reserve(account, **reserve_args("req_a"))
            assert account in pool._actors
            while account in pool._actors:
                await trio.sleep(0.01)
            second = await pool.reserve(account, **reserve_args("req_b"))
            for reserved in (first, second):
                await pool.release(account, reserved.hold.id)
        pool.close()
    assert (await storage.get_wallet(account)).locked == 0


async def test_cancelled_requesters_never_leave_holds_behind(storage):
    """Reserves cancelled at random moments: every hold is either returned to its requester
    or voided by the actor (or the requester's cleanup); none is left pending."""
    account = await funded(storage, 10_000_000_000)
    rng = random.Random(7)
    got: list = []
    async with trio.open_nursery() as nursery:
        pool = WalletPool(storage, WalletConfig())
        await nursery.start(pool.run)
        # Scale the random deadlines to this machine's speed: one reserve takes `unit`.
        started = trio.current_time()
        await pool.release(account, (await pool.reserve(account, **reserve_args("req_probe"))).hold.id)
        unit = trio.current_time() - started

        async def one(i: int, scale: float) -> None:
            with trio.move_on_after(rng.random() * unit * scale):
                got.append(await pool.reserve(account, **reserve_args(f"req_{i}")))

        # A burst is applied in one group commit, so whether deadlines land inside it
        # depends on the machine: narrow the window until some requesters left after
        # their hold was made (the case under test), checking the invariant every time.
        for attempt, scale in enumerate((40, 20, 10, 5, 2, 1, 0.5)):
            got.clear()
            async with trio.open_nursery() as requests:
                for i in range(60):
                    requests.start_soon(one, attempt * 100 + i, scale)
            for reserved in got:
                await pool.release(account, reserved.hold.id)
            wallet = await storage.get_wallet(account)
            assert wallet.locked == 0 and wallet.balance == 10_000_000_000
            ids = {f"req_{attempt * 100 + i}" for i in range(60)}
            made = [e for e in await storage.ledger_entries(account) if e.type == "hold" and e.request_id in ids]
            left = len(made) - len(got)
            if left >= 2:
                break
        pool.close()
    assert await storage.verify_ledger() == []
    assert left >= 2, "no requester left after its hold was made at any scale"


def sim(name: str, weight: float = 1.0, enabled: bool = True) -> DeploymentActor:
    config = DeploymentConfig(name=name, model="gpt-4o-mini", provider="simulator", weight=weight, enabled=enabled)
    return DeploymentActor(config, SimulatorProvider(config))


async def test_router_spreads_by_load_and_skips_disabled():
    a, b, off = sim("a"), sim("b"), sim("off", enabled=False)
    router = Router([a, b, off], rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        for actor in (a, b, off):
            await nursery.start(actor.run)
        first = await router.acquire("gpt-4o-mini", "req_1", 100)
        second = await router.acquire("gpt-4o-mini", "req_2", 100)
        assert {first.slot.deployment, second.slot.deployment} <= {"a", "b"}
        assert a.snapshot.in_flight + b.snapshot.in_flight == 2
        failure = UpstreamError("boom", upstream_status=500)
        await first.finish(None, "ok", 0.1)
        await second.finish(None, "upstream_error", 0.1, failure)
        await second.finish(None, "upstream_error", 0.1, failure)  # a repeated finish changes nothing
        await trio.testing.wait_all_tasks_blocked()
        assert a.snapshot.in_flight == b.snapshot.in_flight == 0
        assert a.snapshot.requests + b.snapshot.requests == 2
        assert a.snapshot.failures + b.snapshot.failures == 1
        assert router.models() == {"gpt-4o-mini"}
        with pytest.raises(NoHealthyDeployment):
            await router.acquire("gpt-4o", "req_3", 1)
        for actor in (a, b, off):
            actor.close()


async def test_cancelled_slot_request_gives_the_slot_back():
    actor = sim("a")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for _ in range(20):
            with trio.move_on_after(0):
                await actor.acquire("req", 1)
            with trio.move_on_after(random.random() * 0.001):
                slot = await actor.acquire("req", 1)
                assert isinstance(slot, Slot)
                await actor.finish(slot, None, "ok", 0.0)
        await trio.testing.wait_all_tasks_blocked()
        assert actor.snapshot.in_flight == 0
        actor.close()


async def test_usage_aggregator_batches_and_flushes_on_close(storage):
    account = await funded(storage, 0)
    aggregator = UsageAggregator(storage, UsageConfig(batch_size=10, flush_interval_seconds=0.05))
    now = dt.datetime.now(dt.UTC)
    async with trio.open_nursery() as nursery:
        await nursery.start(aggregator.run)
        for i in range(25):
            aggregator.record(
                RequestLog(
                    id=f"req_{i}",
                    account_id=account,
                    key_id="key_x",
                    model="gpt-4o-mini",
                    provider="azure",
                    deployment="d",
                    region=None,
                    status="ok",
                    stream=False,
                    prompt_tokens=1,
                    completion_tokens=2,
                    reasoning_tokens=0,
                    cached_tokens=0,
                    cost=3,
                    latency_ms=4,
                    ttft_ms=None,
                    created_at=now,
                )
            )
        await aggregator.wait_flushed()
        assert aggregator.written == 25
        aggregator.record(attrs.evolve(await storage.get_request_log("req_0"), id="req_last"))
        aggregator.close()
    assert await storage.get_request_log("req_last") is not None
    assert aggregator.dropped == 0


async def test_messages_arriving_at_the_end_of_the_idle_window_are_served(storage):
    """The idle timer only bounds the wait for a message, never the handling of one."""
    account = await funded(storage, 10_000_000)
    async with trio.open_nursery() as nursery:
        pool = WalletPool(storage, WalletConfig(idle_seconds=0.02))
        await nursery.start(pool.run)
        with trio.fail_after(30):
            for i in range(30):
                reserved = await pool.reserve(account, **reserve_args(f"req_{i}"))
                await trio.sleep(0.019)
                await pool.release(account, reserved.hold.id)
        pool.close()
    assert (await storage.get_wallet(account)).locked == 0


async def test_one_bad_request_does_not_take_the_wallet_pool_down(storage):
    good = await funded(storage, 10_000_000)
    bad = await funded(storage, 10_000_000)
    async with trio.open_nursery() as nursery:
        pool = WalletPool(storage, WalletConfig())
        await nursery.start(pool.run)
        # A hold beyond any money the store can represent: the store refuses it.
        with pytest.raises(OmixaError):
            await pool.reserve(bad, **{**reserve_args("req_bad"), "output_tokens": 10**18})
        with trio.fail_after(10):
            reserved = await pool.reserve(good, **reserve_args("req_good"))
            await pool.release(good, reserved.hold.id)
        pool.close()
    assert await storage.verify_ledger() == []


async def test_every_waiter_of_the_aggregator_is_woken(storage):
    account = await funded(storage, 0)
    aggregator = UsageAggregator(storage, UsageConfig(flush_interval_seconds=0.01))
    now = dt.datetime.now(dt.UTC)
    woken = []
    async with trio.open_nursery() as nursery:
        await nursery.start(aggregator.run)
        aggregator.record(
            RequestLog(
                id="req_w",
                account_id=account,
                key_id="key_x",
                model="gpt-4o-mini",
                provider="azure",
                deployment="d",
                region=None,
                status="ok",
                stream=False,
                prompt_tokens=1,
                completion_tokens=2,
                reasoning_tokens=0,
                cached_tokens=0,
                cost=3,
                latency_ms=4,
                ttft_ms=None,
                created_at=now,
            )
        )

        async def wait(name: str) -> None:
            await aggregator.wait_flushed()
            woken.append(name)

        with trio.fail_after(5):
            async with trio.open_nursery() as waiters:
                waiters.start_soon(wait, "a")
                waiters.start_soon(wait, "b")
        aggregator.close()
    assert sorted(woken) == ["a", "b"]


def test_image_parts_are_held_at_the_models_worst_case():
    catalog = load_catalog()
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}},
                ],
            }
        ],
    }
    request = parse_chat_request(body, catalog, {"gpt-4o-mini"})
    assert request.prompt_tokens > catalog.get("gpt-4o-mini").image_tokens == 48169


async def test_a_burst_is_group_committed_with_the_outcome_each_message_has_alone(storage):
    """Forty concurrent holds with money for thirty: the actor serves its queue in group
    commits; exactly thirty hold, ten get 402. Then a burst of settles and voids, with a
    settle of an unknown hold among them, leaves an exact wallet and only that one fails."""
    amount = max_cost(10, 100, PRICES)
    funds = 30 * amount + amount // 2
    account = await funded(storage, funds)
    reserved: dict[int, Reserved] = {}
    refused: list[int] = []
    async with trio.open_nursery() as nursery:
        pool = WalletPool(storage, WalletConfig())
        await nursery.start(pool.run)

        async def reserve(i: int) -> None:
            try:
                reserved[i] = await pool.reserve(account, **reserve_args(f"req_{i}"))
            except InsufficientBalance:
                refused.append(i)

        with trio.fail_after(30):
            async with trio.open_nursery() as burst:
                for i in range(40):
                    burst.start_soon(reserve, i)
        assert (len(reserved), len(refused)) == (30, 10)
        assert pool.group_commits >= 1 and pool.grouped_messages > pool.group_commits
        assert (await storage.get_wallet(account)).locked == 30 * amount

        outcomes: dict[str, object] = {}

        async def finish(name: str, hold_id: str, charge: int | None) -> None:
            try:
                if charge is None:
                    outcomes[name] = await pool.release(account, hold_id)
                else:
                    outcomes[name] = await pool.settle(account, hold_id, charge)
            except OmixaError as exc:
                outcomes[name] = exc

        with trio.fail_after(30):
            async with trio.open_nursery() as burst:
                for i, r in reserved.items():
                    burst.start_soon(finish, f"req_{i}", r.hold.id, None if i % 10 == 0 else i)
                burst.start_soon(finish, "missing", "hold_missing", 5)
        pool.close()
    assert isinstance(outcomes.pop("missing"), OmixaError)
    assert all(isinstance(o, Settlement) and not o.already_final for o in outcomes.values())
    charged = sum(i for i in reserved if i % 10)
    assert sum(o.charged for o in outcomes.values()) == charged
    wallet = await storage.get_wallet(account)
    assert (wallet.balance, wallet.locked) == (funds - charged, 0)
    assert await storage.verify_ledger() == []


async def test_a_revoked_key_holds_nothing_alone_or_in_a_group_commit(storage):
    account = await funded(storage, 10_000_000)
    live = await storage.create_api_key(account_id=account, key_hash="h" * 64, prefix="omx_live_aaaaaa", rpm=None)
    dead = await storage.create_api_key(account_id=account, key_hash="d" * 64, prefix="omx_live_bbbbbb", rpm=None)
    assert await storage.revoke_api_key(dead.id)
    results: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        pool = WalletPool(storage, WalletConfig())
        await nursery.start(pool.run)

        async def reserve(name: str, key_id: str) -> None:
            try:
                results[name] = await pool.reserve(account, context=HoldContext(key_id=key_id), **reserve_args(name))
            except OmixaError as exc:
                results[name] = exc

        with trio.fail_after(30):
            await reserve("alone", dead.id)
            async with trio.open_nursery() as burst:
                for i in range(10):
                    burst.start_soon(reserve, f"req_{i}", dead.id if i == 5 else live.id)
        pool.close()
    assert isinstance(results.pop("alone"), InvalidApiKey)
    assert isinstance(results.pop("req_5"), InvalidApiKey)
    assert all(isinstance(r, Reserved) for r in results.values())
    assert (await storage.get_wallet(account)).locked == sum(r.hold.amount for r in results.values())
    assert await storage.verify_ledger() == []
