"""Routing end to end: traffic split by windows, failover across two real fake Azure
deployments, key rate limits, the admin view and a reload of the deployments."""

from __future__ import annotations

import json
from functools import partial

import httpx
import pytest
import trio
import trio.testing
from fake_azure import open_fake_azure
from harness import MODEL, azure_deployment, open_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


# -- end to end, two fake Azure deployments --------------------------------------------------
async def post(client: httpx.AsyncClient, gw, key: str, **extra) -> httpx.Response:
    return await client.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 20, **extra},
    )


async def test_rpm_windows_split_traffic_then_503_with_retry_after(database_url):
    async with open_fake_azure() as east, open_fake_azure() as west:
        deployments = [azure_deployment(east, name="east", rpm=5), azure_deployment(west, name="west", rpm=5)]
        async with open_gateway(database_url, deployments=deployments) as gw:
            _, key = await gw.funded_account("1.00")
            async with httpx.AsyncClient() as client:
                for _ in range(10):
                    assert (await post(client, gw, key)).status_code == 200
                assert len(east.requests) == len(west.requests) == 5
                refused = await post(client, gw, key)
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "no_healthy_deployment"
                assert 55 <= int(refused.headers["retry-after"]) <= 61
            assert len(east.requests) + len(west.requests) == 10


@pytest.mark.parametrize("failure", ["429", "500", "hang"])
async def test_failover_keeps_every_request_succeeding_and_charged_once(database_url, failure):
    async with open_fake_azure() as bad, open_fake_azure() as good:
        # The bad one is heavily preferred, so only its health can keep traffic away from it.
        deployments = [azure_deployment(bad, name="bad", weight=100.0), azure_deployment(good, name="good")]
        async with open_gateway(
            database_url,
            deployments=deployments,
            upstream={"timeout_seconds": 1.0, "request_timeout_seconds": 5, "attempt_timeout_seconds": 1.0},
            breaker={"failures": 2, "cooldown_seconds": 3.0},
        ) as gw:
            account, key = await gw.funded_account("1.00")
            if failure == "429":
                bad.rate_limit_next(7, retry_after_ms=800, count=100)
            elif failure == "500":
                bad.fail_next(500, count=100)
            else:
                bad.hang = True
            async with httpx.AsyncClient(timeout=10) as client:
                for i in range(12):
                    # A hung stream fails over after its head timeout (timeout_seconds), a
                    # hung non-streaming call after its attempt timeout.
                    response = await post(client, gw, key, stream=bool(i % 2))
                    assert response.status_code == 200, response.text
            bad_actor = next(a for a in gw.engine.deployments if a.config.name == "bad")
            assert bad_actor.snapshot.health in ("cooling", "open", "half_open")
            tried_bad = len(bad.requests)
            assert 1 <= tried_bad <= 6  # cooled down / opened: not tried for every request
            # Every request was charged once, for its successful attempt only.
            await gw.flushed()
            entries = await gw.storage.ledger_entries(account)
            assert [e.type for e in entries].count("hold") == 12
            assert [e.type for e in entries].count("charge") == 12
            assert await gw.storage.verify_ledger() == []
            # Later it recovers: the bad deployment answers again and gets traffic.
            bad.hang = False
            bad._failures.clear()
            with trio.fail_after(10):
                while len(bad.requests) == tried_bad or bad_actor.snapshot.health != "closed":
                    await trio.sleep(0.3)
                    async with httpx.AsyncClient(timeout=10) as client:
                        assert (await post(client, gw, key)).status_code == 200


async def test_a_hung_deployment_fails_over_within_the_request_budget(database_url):
    """A deployment that takes a non-streaming call and never answers: the attempt times out
    after the deployment's own attempt_timeout_seconds, counts against its health, and the
    request is answered by the healthy deployment, well within request_timeout_seconds."""
    async with open_fake_azure() as hung, open_fake_azure() as healthy:
        hung.hang = True
        deployments = [
            azure_deployment(hung, name="hung", weight=100.0, attempt_timeout_seconds=0.5),
            azure_deployment(healthy, name="healthy", weight=0.001),
        ]
        async with open_gateway(
            database_url,
            deployments=deployments,
            upstream={"timeout_seconds": 5, "request_timeout_seconds": 20},
            breaker={"failures": 2},
        ) as gw:
            account, key = await gw.funded_account("1.00")
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(2):
                    started = trio.current_time()
                    response = await post(client, gw, key)
                    assert response.status_code == 200, response.text
                    assert trio.current_time() - started < 5  # one 0.5 s attempt, then the other
            hung_actor = next(a for a in gw.engine.deployments if a.config.name == "hung")
            assert hung_actor.snapshot.failures == 2 and hung_actor.snapshot.health == "open"
            assert len(hung.requests) == 2 and len(healthy.requests) == 2
            entries = await gw.settled_entries(account)
            assert [e.type for e in entries].count("charge") == 2
            # The budget still bounds the whole: an attempt never outlasts what is left of it.
            hung_only = [azure_deployment(hung, name="hung", attempt_timeout_seconds=30)]
        async with open_gateway(
            database_url,
            deployments=hung_only,
            upstream={"request_timeout_seconds": 1.0},
        ) as gw:
            _, key = await gw.funded_account("1.00")
            async with httpx.AsyncClient(timeout=30) as client:
                started = trio.current_time()
                response = await post(client, gw, key)
                assert response.status_code == 504
                assert trio.current_time() - started < 5


async def _occupy(client: httpx.AsyncClient, gw, key: str, fake, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Hold the gateway's only connection to ``fake`` (which hangs) with a stream, until cancelled."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(post, client, gw, key, stream=True))
        with trio.fail_after(10):
            await fake.wait_until(lambda f: len(f.requests) == 1)
        task_status.started()


async def test_a_full_connection_pool_fails_over_fast_and_leaves_health_alone(database_url):
    """All ``max_connections`` to an origin busy: a request waits at most
    ``connect_timeout_seconds`` for one, then goes to another deployment; with none left it is
    refused with 503 and Retry-After, charged nothing. The full pool is this process's own
    limit, not the upstream's fault: one failure would open these breakers, and none opens."""
    async with open_fake_azure() as busy, open_fake_azure() as spare:
        busy.hang = True
        upstream = {"max_connections": 1, "connect_timeout_seconds": 0.3, "timeout_seconds": 30}
        breaker = {"failures": 1, "cooldown_seconds": 60}
        deployments = [
            azure_deployment(busy, name="busy", weight=100.0),
            azure_deployment(spare, name="spare", weight=0.001),
        ]
        async with open_gateway(database_url, deployments=deployments, upstream=upstream, breaker=breaker) as gw:
            _, key = await gw.funded_account("1.00")
            async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
                await nursery.start(_occupy, client, gw, key, busy)
                started = trio.current_time()
                for stream in (False, True):
                    response = await post(client, gw, key, stream=stream)
                    assert response.status_code == 200, response.text
                assert trio.current_time() - started < 5  # not the 30 s head timeout
                assert len(busy.requests) == 1 and len(spare.requests) == 2
                busy_actor = next(a for a in gw.engine.deployments if a.config.name == "busy")
                assert busy_actor.snapshot.health == "closed"
                nursery.cancel_scope.cancel()

        async with open_gateway(database_url, busy, upstream=upstream, breaker=breaker) as gw:
            account, key = await gw.funded_account("1.00")
            async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
                busy.requests.clear()
                await nursery.start(_occupy, client, gw, key, busy)
                refused = []
                for stream in (False, True):
                    response = await post(client, gw, key, stream=stream)
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "no_healthy_deployment"
                    assert response.headers["retry-after"] == "1"
                    refused.append(response.headers["x-request-id"])
                assert len(busy.requests) == 1
                (actor,) = gw.engine.deployments
                assert actor.snapshot.health == "closed"
                nursery.cancel_scope.cancel()
            # The refused requests' holds were released: nothing charged for them.
            entries = await gw.settled_entries(account)
            for request_id in refused:
                assert [e.type for e in entries if e.request_id == request_id] == ["hold", "release"]
                assert (await gw.request_log(request_id)).status == "no_healthy_deployment"
            assert await gw.storage.verify_ledger() == []


async def test_key_rate_limits_refuse_with_429_and_report_headers(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, limits={"key_tpm": 100_000}) as gw:
        account, _ = await gw.funded_account("1.00")
        limited = await gw.engine.accounts.create_key(account, rpm=3)
        rows = len(await gw.storage.ledger_entries(account))
        async with httpx.AsyncClient() as client:
            for i in range(3):
                ok = await post(client, gw, limited.secret)
                assert ok.status_code == 200
                assert ok.headers["x-ratelimit-limit-requests"] == "3"
                assert ok.headers["x-ratelimit-remaining-requests"] == str(2 - i)
                assert ok.headers["x-ratelimit-limit-tokens"] == "100000"
                assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
            refused = await post(client, gw, limited.secret)
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert error["code"] == "rate_limited" and error["request_id"] == refused.headers["x-request-id"]
            # The first request leaves the 60 s window at most 60 s from now, never later.
            assert 55 <= int(refused.headers["retry-after"]) <= 60
            assert reset_seconds(refused.headers["x-ratelimit-reset-requests"]) <= 60
            assert refused.headers["x-ratelimit-remaining-requests"] == "0"
            # Reads do not count, and still report the state.
            wallet = await client.get(f"{gw.base_url}/wallet", headers={"Authorization": f"Bearer {limited.secret}"})
            assert wallet.status_code == 200 and wallet.headers["x-ratelimit-remaining-requests"] == "0"
            # A request larger than the key's token limit can never fit: 400, so no client
            # retries it, and no Retry-After.
            huge = await post(client, gw, (await gw.engine.accounts.create_key(account, tpm=10)).secret)
            assert huge.status_code == 400 and "retry-after" not in huge.headers
            assert huge.json()["error"]["code"] == "invalid_request"
            assert "10 tokens per minute" in huge.json()["error"]["message"]
        assert len(fake.requests) == 3
        # Refused calls held nothing: 3 requests' worth of ledger rows were added (hold,
        # charge, release each).
        assert len(await gw.storage.ledger_entries(account)) == rows + 9


def reset_seconds(value: str) -> float:
    """Seconds in OpenAI's reset format (``"1m0s"``, ``"59s"``, ``"18ms"``)."""
    if value.endswith("ms"):
        return int(value[:-2]) / 1000
    minutes, _, seconds = value[:-1].rpartition("m")
    return int(minutes or 0) * 60 + int(seconds)


def test_reset_durations_are_formatted_like_openai():
    from omixa.engine.keylimits import format_reset

    assert [format_reset(s) for s in (0.0172, 1, 59.2, 360)] == ["18ms", "1s", "1m0s", "6m0s"]


async def test_admin_view_of_deployments(database_url, monkeypatch):
    async with open_fake_azure() as fake:
        async with open_gateway(database_url, deployments=[azure_deployment(fake, rpm=50)]) as gw:
            async with httpx.AsyncClient() as client:
                # Without OMIXA_ADMIN_TOKEN the route does not exist.
                assert (await client.get(f"{gw.root_url}/admin/deployments")).status_code == 404
        monkeypatch.setenv("OMIXA_ADMIN_TOKEN", "s3cret")
        async with open_gateway(database_url, deployments=[azure_deployment(fake, rpm=50)]) as gw:
            _, key = await gw.funded_account("1.00")
            async with httpx.AsyncClient() as client:
                assert (await post(client, gw, key)).status_code == 200
                wrong = await client.get(f"{gw.root_url}/admin/deployments", headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                view = (
                    await client.get(f"{gw.root_url}/admin/deployments", headers={"Authorization": "Bearer s3cret"})
                ).json()
        [deployment] = view["data"]
        assert deployment["name"] == "eastus-1" and deployment["health"] == "closed"
        assert deployment["windows"]["rpm"] == {"used": 1, "limit": 50}
        assert deployment["requests"] == 1 and deployment["in_flight"] == 0
        assert fake.api_key not in str(view)


def write_deployments(path, database_url: str, *entries: dict) -> None:
    lines = [f'[server]\nreload_poll_seconds = 0.05\nshutdown_grace_seconds = 2\n[storage]\nurl = "{database_url}"\n']
    for entry in entries:
        lines.append(
            "[[deployments]]\n"
            + "".join(
                f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else f"{k} = {v}\n" for k, v in entry.items()
            )
        )
    text = "\n".join(lines)
    # A new mtime even on coarse clocks: the watcher compares modification times.
    path.write_text(text)


async def test_reload_adds_retunes_and_removes_deployments_without_breaking_streams(database_url, tmp_path):
    config = tmp_path / "omixa.toml"
    async with open_fake_azure(reply=" ".join(["word"] * 40), chunk_delay=0.05) as old, open_fake_azure() as new:
        write_deployments(config, database_url, azure_deployment(old, name="old", rpm=100))
        async with open_gateway(database_url, config_path=config) as gw:
            account, key = await gw.funded_account("1.00")
            done = trio.Event()
            streamed: list[bytes] = []

            async def long_stream() -> None:
                async with httpx.AsyncClient(timeout=30) as client:
                    async with client.stream(
                        "POST",
                        f"{gw.base_url}/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": MODEL, "messages": MESSAGES, "stream": True},
                    ) as response:
                        async for chunk in response.aiter_raw():
                            streamed.append(chunk)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_stream)
                with trio.fail_after(5):
                    await old.wait_until(lambda f: f.streams_started == 1)

                # Re-tune (rpm 100 -> 7) and add a deployment.
                write_deployments(
                    config,
                    database_url,
                    azure_deployment(old, name="old", rpm=7),
                    azure_deployment(new, name="new"),
                )
                with trio.fail_after(5):
                    while len(gw.engine.deployments) != 2:
                        await trio.sleep(0.02)
                old_actor = next(a for a in gw.engine.deployments if a.config.name == "old")
                assert old_actor.config.rpm == 7

                # A bad config is refused and changes nothing.
                config.write_text(config.read_text().replace('model = "gpt-4o-mini"', 'model = "gpt-9"'))
                await trio.sleep(0.3)
                assert {a.config.name for a in gw.engine.deployments} == {"old", "new"}

                # Remove the deployment that is still streaming.
                write_deployments(config, database_url, azure_deployment(new, name="new"))
                with trio.fail_after(5):
                    while {a.config.name for a in gw.engine.deployments} != {"new"}:
                        await trio.sleep(0.02)
                async with httpx.AsyncClient() as client:
                    for _ in range(3):
                        assert (await post(client, gw, key)).status_code == 200
                assert len(new.requests) == 3
                with trio.fail_after(10):
                    await done.wait()
            body = b"".join(streamed)
            assert body.rstrip().endswith(b"data: [DONE]")  # the old stream was never broken
            assert old.streams_finished == 1
            assert await gw.storage.verify_ledger() == []
            assert (await gw.storage.get_wallet(account)).locked == 0


@pytest.mark.parametrize("knobs", [{"break_after": 0}, {"first_delay": 5.0}])
async def test_a_stream_fails_over_after_comments_but_before_content(database_url, knobs):
    """The padding and heartbeats went out, then the first deployment broke (or stayed
    silent past the idle timeout) before any content: the stream continues on the other."""
    async with open_fake_azure(**knobs) as bad, open_fake_azure(reply="Hello from the other side.") as good:
        # Weights 100 : 0.001, so the first pick is the bad one but for a 1-in-100,000 chance
        # (at 100 : 1 it was 1 in 101, which made the test flaky).
        deployments = [
            azure_deployment(bad, name="bad", weight=100.0),
            azure_deployment(good, name="good", weight=0.001),
        ]
        async with open_gateway(
            database_url,
            deployments=deployments,
            # 1.5 s: far below the bad one's 5 s of silence, far above what the good one takes
            # even on a machine busy with other tests (0.5 s was not, once).
            upstream={"idle_timeout_seconds": 1.5},
            streaming={"heartbeat_seconds": 0.1},
        ) as gw:
            account, key = await gw.funded_account("1.00")
            start = (await gw.storage.get_wallet(account)).balance
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": MESSAGES, "stream": True},
                )
            events = [e for e in response.content.split(b"\n\n") if e]
            data = [e for e in events if e.startswith(b"data:")]
            assert data[-1] == b"data: [DONE]"
            text = "".join(
                choice["delta"].get("content") or "" for e in data[:-1] for choice in json.loads(e[5:])["choices"]
            )
            assert text == "Hello from the other side."
            assert len(bad.requests) == 1 and len(good.requests) == 1
            entries = await gw.storage.ledger_entries(account)
            assert [e.type for e in entries].count("charge") == 1
            row = await gw.request_log(next(e.request_id for e in entries if e.type == "hold"))
            assert row.status == "ok" and row.deployment == "good"
            wallet = await gw.storage.get_wallet(account)
            assert wallet.locked == 0 and wallet.balance == start - row.cost
