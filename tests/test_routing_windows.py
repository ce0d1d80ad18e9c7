"""Routing, the deployment's side: windows and health on trio's autojump clock (minutes and
hours pass instantly)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from harness import MODEL

from omixa.engine.config import BreakerConfig, DeploymentConfig
from omixa.engine.deployment import DeploymentActor
from omixa.engine.deployment_types import Refused, Slot
from omixa.engine.errors import UpstreamError, UpstreamTimeout
from omixa.engine.providers import SimulatorProvider
from omixa.engine.upstream import Usage
from omixa.engine.windows import Health, SlidingWindow, hour_window, minute_window


# -- windows and health, on the autojump clock ----------------------------------------------
def test_minute_window_slides_and_says_when_room_comes_back():
    window = minute_window(5)
    for t in range(5):
        window.add(float(t), 1)  # a burst up to the limit is admitted at once
    assert not window.fits(4.0, 1)
    assert window.room_at(4.0, 1) == 60.0  # the request of t=0 leaves exactly 60 s later
    assert window.used(59.5) == 5 and window.fits(60.0, 1) and window.used(60.0) == 4
    assert window.room_at(10.0, 6) is None  # larger than the limit: never
    assert window.clear_at(10.0) == 64.0  # everything has left once the t=4 request has


def test_a_window_never_lets_an_amount_go_early():
    """Amounts of one bucket leave together, when the latest of them is a span old: up to a
    bucket late, never early, and a refusal never announces more than the span."""
    window = minute_window(2)
    window.add(10.25, 1)
    window.add(10.75, 1)
    assert window.room_at(10.75, 1) == 70.75
    assert window.used(70.5) == 2 and window.used(70.75) == 0


def test_token_windows_take_the_real_usage_back():
    window = SlidingWindow(1000, 60.0, 1.0)
    window.add(10.2, 900)  # admission counts the estimate (prompt + output cap)
    assert not window.fits(10.5, 200)
    window.adjust(10.2, 120 - 900)  # settlement: the request used 120 tokens
    assert window.used(10.5) == 120 and window.fits(10.5, 800)
    window.adjust(10.2, -5000)  # never below what the bucket held
    assert window.used(11.0) == 0


def test_hour_window():
    window = hour_window(10_000)
    window.add(0.0, 6_000)
    window.add(1_800.0, 4_000)
    assert not window.fits(3_599.0, 1)
    assert window.room_at(3_599.0, 1) == 3_600.0  # the tokens of t=0 leave an hour later
    assert window.fits(3_600.0, 6_000)


def test_breaker_opens_after_consecutive_failures_and_one_probe_closes_it():
    health = Health(failures_to_open=3, cooldown_seconds=30)
    for t in (1.0, 2.0):
        health.on_failure(t)
        assert health.admits(t)
    health.on_failure(3.0)
    assert not health.admits(3.0) and health.retry_at(3.0) == 33.0
    assert health.admits(33.0)  # half-open: one probe
    health.on_admit()
    assert not health.admits(33.5)  # only one
    health.on_failure(34.0)  # the probe failed: open again
    assert not health.admits(40.0) and health.retry_at(40.0) == 64.0
    health.on_admit() if health.admits(64.0) else pytest.fail("no probe after cooldown")
    health.on_success()
    assert health.state == "closed" and health.admits(64.1)


def test_a_429_cools_down_for_the_upstreams_delay_or_the_default():
    health = Health(failures_to_open=3, cooldown_seconds=30)
    health.on_rate_limited(10.0, 7.5)
    assert not health.admits(17.0) and health.admits(17.5)
    health.on_rate_limited(20.0, None)
    assert health.retry_at(20.0) == 50.0


def sim_actor(**knobs) -> DeploymentActor:
    config = DeploymentConfig(name="d", model=MODEL, provider="simulator", **knobs)
    return DeploymentActor(config, SimulatorProvider(config), BreakerConfig(failures=2, cooldown_seconds=30))


async def test_deployment_actor_windows_over_simulated_minutes_and_hours(autojump_clock):
    actor = sim_actor(rpm=3, tpm=10_000, hourly_tokens=25_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        slots = [await actor.acquire(f"r{i}", 2_000) for i in range(3)]
        assert all(isinstance(s, Slot) for s in slots)
        refused = await actor.acquire("r4", 2_000)
        assert isinstance(refused, Refused) and refused.reason == "rpm"
        assert 59 < refused.retry_after <= 61  # 1 s buckets: up to a second late, never early
        for slot in slots:  # each really used 3,000 tokens
            await actor.finish(slot, Usage(prompt_tokens=1_000, completion_tokens=2_000), "ok", 0.1)
        await trio.sleep(61)
        big = await actor.acquire("r5", 11_000)  # the snapshot is published with each message
        assert isinstance(big, Refused) and big.reason == "too_large" and big.retry_after is None
        assert actor.snapshot.windows["tpm"].used == 0
        assert actor.snapshot.windows["hourly_tokens"].used == 9_000
        total = 9_000
        while total + 8_000 <= 25_000:  # fill the hour, a minute apart to stay under tpm
            slot = await actor.acquire("r", 8_000)
            assert isinstance(slot, Slot)
            await actor.finish(slot, Usage(prompt_tokens=8_000), "ok", 0.1)
            total += 8_000
            await trio.sleep(61)
        refused = await actor.acquire("r6", 8_000)
        assert isinstance(refused, Refused) and refused.reason == "hourly_tokens"
        await trio.sleep(refused.retry_after)
        assert isinstance(await actor.acquire("r7", 8_000), Slot)
        actor.close()


async def test_deployment_actor_health_from_outcomes(autojump_clock):
    actor = sim_actor()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        slot = await actor.acquire("r1", 10)
        await actor.finish(
            slot, None, "no_healthy_deployment", 0.1, UpstreamError("busy", upstream_status=429, retry_after=7)
        )
        await trio.testing.wait_all_tasks_blocked()
        refused = await actor.acquire("r2", 10)
        assert (
            isinstance(refused, Refused)
            and refused.reason == "cooling"
            and refused.retry_after == pytest.approx(7, abs=0.01)
        )
        await trio.sleep(7)
        for _ in range(2):  # two failures in a row open the breaker (failures=2)
            slot = await actor.acquire("r", 10)
            await actor.finish(slot, None, "upstream_timeout", 0.1, UpstreamTimeout())
        await trio.testing.wait_all_tasks_blocked()
        assert actor.snapshot.health == "open"
        await trio.sleep(30)
        probe = await actor.acquire("probe", 10)
        assert isinstance(probe, Slot)
        assert isinstance(await actor.acquire("other", 10), Refused)  # one probe at a time
        await actor.finish(probe, Usage(prompt_tokens=1, completion_tokens=1), "ok", 0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert actor.snapshot.health == "closed"
        # A 4xx is the request's fault: it says nothing bad about the deployment.
        slot = await actor.acquire("r", 10)
        await actor.finish(slot, None, "invalid_request", 0.1, UpstreamError("bad", upstream_status=400))
        await trio.testing.wait_all_tasks_blocked()
        assert actor.snapshot.health == "closed"
        actor.close()
