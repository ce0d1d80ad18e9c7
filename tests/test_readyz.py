"""Readiness (``GET /readyz``) for load balancers and orchestrators: 200 only while the
database and Redis (when configured) answer and every supervised task runs; ``/healthz``
stays liveness. And the supervision state it reads, with a task that really crashes."""

from __future__ import annotations

from functools import partial

import httpx
import trio
from fake_azure import open_fake_azure
from harness import open_gateway

from omixa.engine.supervise import Supervision, supervised


async def probe(gw, path: str = "/readyz") -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{gw.root_url}{path}")
    return answer.status_code, answer.json()


async def test_ready_when_everything_answers(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        assert await probe(gw) == (200, {"status": "ready"})
        assert (await probe(gw, "/healthz"))[0] == 200


async def test_not_ready_while_redis_is_away_and_ready_again_when_it_is_back(tmp_path, redis_server):
    async with (
        open_fake_azure() as fake,
        open_gateway(
            f"sqlite:///{tmp_path / 'r.db'}", fake, cluster={"redis_url": redis_server.url, "timeout_seconds": 0.25}
        ) as gw,
    ):
        assert await probe(gw) == (200, {"status": "ready"})
        redis_server.stop()
        status, body = await probe(gw)
        assert status == 503 and body["status"] == "not_ready"
        assert any(problem.startswith("Redis") for problem in body["problems"]), body
        assert not any("127.0.0.1" in problem for problem in body["problems"])  # no setup details
        assert (await probe(gw, "/healthz"))[0] == 200  # alive all the same
        redis_server.start()
        with trio.fail_after(10):
            while (await probe(gw))[0] != 200:
                await trio.sleep(0.1)


async def test_supervision_follows_a_task_through_a_crash_and_its_restart():
    supervision = Supervision()
    crashed, go_on, done = trio.Event(), trio.Event(), trio.Event()
    runs = 0

    async def task(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            task_status.started()
            crashed.set()
            raise RuntimeError("the first run fails")
        await go_on.wait()  # the second run starts, then says it is ready
        task_status.started()
        await done.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(supervised, "worker", task, supervision=supervision))
        await crashed.wait()
        assert supervision.not_running() == ["worker"]  # restarting, then starting
        with trio.fail_after(5):
            while supervision.states.get("worker") != "starting":
                await trio.sleep(0.01)
        go_on.set()
        with trio.fail_after(5):
            while supervision.not_running():
                await trio.sleep(0.01)
        assert supervision.states == {"worker": "running"}
        done.set()
    assert supervision.states == {}  # a task that returned is gone
