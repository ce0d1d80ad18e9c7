"""Deployment windows and health, and developer keys' limits, shared through a real Redis by
several processes' actors.

Each "process" here is a deployment actor with its own Redis client (its own connections),
as in separate ``omixa serve`` processes; the end-to-end cases with real processes are in
test_cluster_e2e.py. Times are Redis's clock, so these run on the real clock.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from harness import MODEL

from omixa.engine.cluster import AdmissionBook, ClusterLink, Share
from omixa.engine.config import BreakerConfig, ClusterConfig, DeploymentConfig, LimitsConfig, SecurityConfig
from omixa.engine.deployment import DeploymentActor
from omixa.engine.deployment_types import Refused, Slot
from omixa.engine.errors import InvalidRequest, RateLimited, ReplayedRequest, UpstreamError
from omixa.engine.keylimits import KeyLimiter
from omixa.engine.providers import SimulatorProvider
from omixa.engine.signatures import Claim, SignatureVerifier
from omixa.engine.upstream import Usage
from omixa.storage import ApiKeyRecord
from omixa.storage.coordination import open_coordinator


@asynccontextmanager
async def actors_on_redis(
    redis_url: str,
    count: int,
    breaker: BreakerConfig | None = None,
    live: Callable[[], int] | None = None,
    **knobs,
) -> AsyncIterator[list[DeploymentActor]]:
    """``count`` actors of one deployment, each with a Redis client of its own."""
    config = DeploymentConfig(name="shared-d", model=MODEL, provider="simulator", **knobs)
    cluster = ClusterConfig(redis_url=redis_url, key_prefix="t" + secrets.token_hex(4), retry_seconds=0.2)
    async with AsyncExitStack() as stack:
        actors = []
        for _ in range(count):
            coordinator = await stack.enter_async_context(
                open_coordinator(redis_url, prefix=cluster.key_prefix, timeout=cluster.timeout_seconds)
            )
            link = ClusterLink(coordinator, cluster, live or (lambda: count))
            actors.append(DeploymentActor(config, SimulatorProvider(config), breaker, cluster=link))
        async with trio.open_nursery() as nursery:
            for actor in actors:
                await nursery.start(actor.run)
            yield actors
            for actor in actors:
                actor.close()


def evalsha_calls(redis_server) -> int:
    info = redis_server.command("INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_three_processes_admit_exactly_the_rpm_limit_in_batches(redis_server):
    async with actors_on_redis(redis_server.url, 3, rpm=30) as actors:
        before = evalsha_calls(redis_server)
        answers: list[Slot | Refused] = []

        async def ask(i: int) -> None:
            answers.append(await actors[i % 3].acquire(f"r{i}", 100))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(ask, i)
        calls = evalsha_calls(redis_server) - before
        granted = [a for a in answers if isinstance(a, Slot)]
        refused = [a for a in answers if isinstance(a, Refused)]
        assert len(granted) == 30 and len(refused) == 170
        assert {r.reason for r in refused} == {"rpm"}
        assert all(r.retry_after is not None and 0 < r.retry_after <= 61 for r in refused)
        assert calls < 200, calls  # some went together (see the batching test below)
        # Every process sees the whole fleet's count.
        await trio.sleep(0.1)
        await actors[0].acquire("refresh", 1)
        assert actors[0].snapshot.windows["rpm"].used == 30


async def test_admissions_that_arrive_during_a_call_go_in_the_next_one(redis_server):
    async with actors_on_redis(redis_server.url, 1, rpm=1000) as (actor,):
        await actor.acquire("warm", 1)  # the script is loaded, a connection open
        before = evalsha_calls(redis_server)
        redis_server.command("CLIENT", "PAUSE", "500", "WRITE")  # the next call waits 500 ms
        answers: list[Slot | Refused] = []

        async def ask(i: int) -> None:
            answers.append(await actor.acquire(f"r{i}", 1))

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(ask, i)
        assert len(answers) == 100 and all(isinstance(a, Slot) for a in answers)
        # One call (or two: the first admissions may start one before the rest arrive)
        # held by the pause, then everything that arrived meanwhile in one more.
        assert evalsha_calls(redis_server) - before <= 3


async def test_real_usage_corrects_the_shared_estimate(redis_server):
    async with actors_on_redis(redis_server.url, 2, tpm=3_000) as (a, b):
        slots = [await a.acquire(f"r{i}", 1_000) for i in range(3)]
        assert all(isinstance(s, Slot) for s in slots)
        refused = await b.acquire("r4", 1_000)
        assert isinstance(refused, Refused) and refused.reason == "tpm"
        for slot in slots:  # each really used 200: 2,400 of the estimate is released
            assert isinstance(slot, Slot)
            await a.finish(slot, Usage(prompt_tokens=150, completion_tokens=50), "ok", 0.1)
        with trio.fail_after(5):
            while not isinstance(answer := await b.acquire("r5", 2_000), Slot):
                await trio.sleep(0.02)
        assert answer.shared_at is not None
        too_big = await b.acquire("r6", 3_001)
        assert isinstance(too_big, Refused) and too_big.reason == "too_large" and too_big.retry_after is None


async def test_a_429_in_one_process_cools_the_deployment_down_in_every_process(redis_server):
    async with actors_on_redis(redis_server.url, 3) as actors:
        slot = await actors[0].acquire("r1", 10)
        assert isinstance(slot, Slot)
        limited = UpstreamError("rate limited", upstream_status=429, retry_after=3.0)
        await actors[0].finish(slot, None, "upstream_error", 0.1, limited)
        with trio.fail_after(2):
            while not isinstance(refused := await actors[2].acquire("r2", 10), Refused):
                await actors[2].finish(refused, None, "cancelled", 0.0)
                await trio.sleep(0.01)
        assert refused.reason == "cooling" and 2 < refused.retry_after <= 3
        assert actors[1].snapshot.health in ("closed", "cooling")
        await trio.sleep(refused.retry_after + 0.05)
        assert isinstance(await actors[1].acquire("r3", 10), Slot)


async def test_a_breaker_opened_in_one_process_keeps_the_others_off_then_one_probe_closes_it(redis_server):
    breaker = BreakerConfig(failures=2, cooldown_seconds=1.0)
    async with actors_on_redis(redis_server.url, 3, breaker) as actors:
        failing = UpstreamError("upstream 500", upstream_status=500)
        for i in range(2):
            slot = await actors[0].acquire(f"f{i}", 10)
            assert isinstance(slot, Slot)
            await actors[0].finish(slot, None, "upstream_error", 0.1, failing)
        with trio.fail_after(2):
            while isinstance(answer := await actors[1].acquire("x", 10), Slot):
                await actors[1].finish(answer, None, "cancelled", 0.0)
                await trio.sleep(0.01)
        assert answer.reason == "open" and 0 < answer.retry_after <= 1.0
        await trio.sleep(answer.retry_after + 0.05)
        # Half-open: the fleet lets one probe through.
        probe = await actors[2].acquire("probe", 10)
        assert isinstance(probe, Slot) and probe.probe
        others = [await actors[i].acquire("p", 10) for i in (0, 1)]
        assert all(isinstance(o, Refused) and o.reason == "probing" for o in others)
        await actors[2].finish(probe, Usage(prompt_tokens=5), "ok", 0.1)
        with trio.fail_after(2):
            while not isinstance(answer := await actors[0].acquire("after", 10), Slot):
                await trio.sleep(0.01)
        assert not answer.probe


async def test_without_redis_each_process_admits_its_share_then_rejoins(redis_server, caplog):
    caplog.set_level(logging.INFO, logger="omixa.cluster")
    async with actors_on_redis(redis_server.url, 3, rpm=30) as actors:
        first = [await actors[0].acquire(f"a{i}", 10) for i in range(6)]
        assert all(isinstance(s, Slot) for s in first)
        redis_server.stop()
        granted = 0
        for i in range(60):
            answer = await actors[i % 3].acquire(f"g{i}", 10)
            granted += isinstance(answer, Slot)
        # Each process: 30 // 3 = 10, less the 6 the shared window held when it last read it
        # (process 0 learned of its own 6; the others had read the window before they came).
        assert 6 + granted <= 30, granted
        assert granted >= 10
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "not answering" in r.message]
        assert len(warnings) == 3 and "1/3" in warnings[0].message  # one per process
        redis_server.start()  # empty: it kept nothing
        with trio.fail_after(5):
            while any(actor._side.alone for actor in actors):
                await trio.sleep(0.05)
        assert any("answers again" in r.message for r in caplog.records)
        # What was admitted alone is in the shared window again: no more than 30 in all.
        more = 0
        for i in range(40):
            more += isinstance(await actors[i % 3].acquire(f"m{i}", 10), Slot)
        assert granted + more <= 30, (granted, more)


async def test_a_process_without_redis_at_start_serves_on_its_share(caplog):
    caplog.set_level(logging.WARNING, logger="omixa.cluster")
    url = "redis://127.0.0.1:1/0"  # nothing listens there
    async with actors_on_redis(url, 2, rpm=10) as (a, _b):
        answers = [await a.acquire(f"r{i}", 10) for i in range(8)]
        assert sum(isinstance(x, Slot) for x in answers) == 5
        refused = answers[-1]
        assert isinstance(refused, Refused) and refused.reason == "rpm"
    assert any("not answering" in r.message for r in caplog.records)


@pytest.mark.parametrize("count", [1])
async def test_one_process_with_redis_behaves_as_without(redis_server, count):
    async with actors_on_redis(redis_server.url, count, rpm=3, tpm=10_000) as (actor,):
        slots = [await actor.acquire(f"r{i}", 2_000) for i in range(3)]
        assert all(isinstance(s, Slot) for s in slots)
        refused = await actor.acquire("r4", 2_000)
        assert isinstance(refused, Refused) and refused.reason == "rpm" and 59 < refused.retry_after <= 61
        assert actor.snapshot.windows["rpm"].used == 3 and actor.snapshot.windows["tpm"].used == 6_000
        assert actor.snapshot.room == 0.0


async def test_a_redis_that_lost_its_state_gets_back_what_each_process_admitted(redis_server):
    async with actors_on_redis(redis_server.url, 2, rpm=10) as (a, b):
        for actor in (a, b):
            for i in range(3):
                assert isinstance(await actor.acquire(f"r{i}", 10), Slot)
        redis_server.command("FLUSHALL")  # as a restart of a Redis that keeps nothing on disk
        granted = 0
        for i in range(20):
            granted += isinstance(await (a, b)[i % 2].acquire(f"after{i}", 10), Slot)
            await trio.sleep(0.01)
        # The first call after the loss may admit before the others put theirs back; from then
        # on the six admitted before count again.
        assert granted <= 4 + 1, granted


@asynccontextmanager
async def limiters_on_redis(redis_url: str, count: int) -> AsyncIterator[list[KeyLimiter]]:
    """``count`` key limiters (one per process), each with a Redis client of its own."""
    cluster = ClusterConfig(redis_url=redis_url, key_prefix="t" + secrets.token_hex(4), retry_seconds=0.2)
    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        limiters = []
        for _ in range(count):
            coordinator = await stack.enter_async_context(
                open_coordinator(redis_url, prefix=cluster.key_prefix, timeout=cluster.timeout_seconds)
            )
            limiter = KeyLimiter(LimitsConfig(key_rpm=0), ClusterLink(coordinator, cluster, lambda: count))
            await nursery.start(limiter.run)
            limiters.append(limiter)
        yield limiters
        for limiter in limiters:
            limiter.close()


def api_key(rpm: int | None = None, tpm: int | None = None) -> ApiKeyRecord:
    return ApiKeyRecord(
        id="key_" + secrets.token_hex(6),
        account_id="acct_x",
        prefix="omx_live_x",
        rpm=rpm,
        tpm=tpm,
        created_at=dt.datetime.now(dt.UTC),
        revoked_at=None,
    )


async def test_a_keys_rpm_holds_across_processes_with_shared_headers(redis_server):
    key = api_key(rpm=10)
    async with limiters_on_redis(redis_server.url, 3) as limiters:
        outcomes: list[float | None] = []

        async def ask(i: int) -> None:
            try:
                await limiters[i % 3].admit_request(key, trio.current_time())
                outcomes.append(None)
            except RateLimited as exc:
                assert exc.type == "requests"  # the limit that refused, as OpenAI's type
                outcomes.append(exc.retry_after)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(ask, i)
        assert outcomes.count(None) == 10
        assert all(r is not None and 58 < r <= 61 for r in outcomes if r is not None)
        # Every process's headers show the fleet's count.
        views = [limiter.views(key, trio.current_time())["requests"] for limiter in limiters]
        assert all(v.limit == 10 and v.remaining == 0 and 58 < v.reset_seconds <= 61 for v in views), views


async def test_a_keys_tokens_are_estimated_then_corrected_across_processes(redis_server):
    key = api_key(tpm=1_000)
    async with limiters_on_redis(redis_server.url, 2) as (a, b):
        admitted = [await a.admit_tokens(key, 400, trio.current_time()) for _ in range(2)]
        with pytest.raises(RateLimited) as refused:
            await b.admit_tokens(key, 400, trio.current_time())
        assert refused.value.type == "tokens"
        for one in admitted:
            a.settle(key.id, one, 400, 50)
        with trio.fail_after(5):
            while True:
                try:
                    await b.admit_tokens(key, 400, trio.current_time())
                    break
                except RateLimited:
                    await trio.sleep(0.02)
        with pytest.raises(InvalidRequest):
            await b.admit_tokens(key, 1_001, trio.current_time())


async def test_without_redis_a_keys_limit_is_split_then_shared_again(redis_server):
    key = api_key(rpm=30)
    async with limiters_on_redis(redis_server.url, 3) as limiters:
        for _ in range(6):
            await limiters[0].admit_request(key, trio.current_time())
        redis_server.stop()
        granted = 0
        for i in range(60):
            try:
                await limiters[i % 3].admit_request(key, trio.current_time())
                granted += 1
            except RateLimited:
                pass
        assert 6 + granted <= 30 and granted >= 10, granted
        redis_server.start()  # empty
        with trio.fail_after(5):
            while any(limiter._side.alone for limiter in limiters):
                await trio.sleep(0.05)
        more = 0
        for i in range(40):
            try:
                await limiters[i % 3].admit_request(key, trio.current_time())
                more += 1
            except RateLimited:
                pass
        assert 6 + granted + more <= 30, (granted, more)


async def test_a_signature_claimed_by_one_process_is_refused_by_another(redis_server):
    cluster = ClusterConfig(redis_url=redis_server.url, key_prefix="t" + secrets.token_hex(4))
    async with AsyncExitStack() as stack:
        verifiers = []
        for _ in range(2):
            coordinator = await stack.enter_async_context(
                open_coordinator(redis_server.url, prefix=cluster.key_prefix, timeout=0.25)
            )
            link = ClusterLink(coordinator, cluster, lambda: 2)
            verifiers.append(SignatureVerifier(SecurityConfig(), None, started_at=0, cluster=link))
        claim = Claim(key_id="key_a", signature="ab" * 32, seconds=5)
        await verifiers[0].claim(claim)
        with pytest.raises(ReplayedRequest):
            await verifiers[1].claim(claim)
        await verifiers[1].claim(Claim(key_id="key_b", signature="ab" * 32, seconds=5))  # another key's
        redis_server.stop()
        await verifiers[1].claim(Claim(key_id="key_a", signature="cd" * 32, seconds=5))  # Redis away: accepted


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shares_add_up_to_the_limit_and_never_more(count):
    for limit in (0, 1, 2, 5, 10, 29, 30, 31, 1000):
        assert sum(Share(i, count).of(limit) for i in range(count)) == limit
        assert count * Share.unranked(count).of(limit) <= limit


def test_an_admission_book_forgets_what_left_its_windows():
    book = AdmissionBook()
    for second in range(0, 600):  # ten minutes of admissions, one a second
        book.add("rpm", second * 1000, 1)
        book.add("hourly_tokens", second * 1000, 10)
        book.sweep(second * 1000)
    kept = book.entries(["rpm", "hourly_tokens"], 600_000)
    rpm = [entry for entry in kept if entry[0] == 0]
    assert len(rpm) <= 61  # only the last minute's buckets
    assert sum(amount for index, _, amount in kept if index == 1) == 6_000  # all within the hour
