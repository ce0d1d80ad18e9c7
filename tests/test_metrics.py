"""``GET /metrics`` after a mix of requests, on both backends: every counter and histogram
count is checked against what the test sent and what the fake upstreams saw; the scrape
passes ``promtool check metrics``; the admin token guards it; ``[metrics] bind`` serves it
without; ``[metrics] enabled = false`` removes it."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess

import httpx
import pytest
import trio
from cluster_helpers import funded_key
from demo_helpers import read_values
from fake_azure import content_filter_error, open_fake_azure
from harness import MODEL, azure_deployment, open_gateway
from prometheus_client.parser import text_string_to_metric_families
from test_cli import OMIXA
from test_workers_e2e import worker_pids

ADMIN = "metrics-admin-token"
MESSAGES = [{"role": "user", "content": "Say something about metrics."}]


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape(url: str, token: str | None = ADMIN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, headers=headers)


def promtool_check(text: str) -> None:
    """``promtool check metrics`` on the exposition, when promtool is installed (.ci/run
    installs Debian's prometheus package, and fails if this was skipped)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian's prometheus package)")
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


async def chat(client: httpx.AsyncClient, gw, key: str, **extra) -> httpx.Response:
    return await client.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 20, **extra},
    )


async def test_metrics_count_what_was_sent(database_url, monkeypatch):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    async with open_fake_azure() as bad, open_fake_azure(reply="One two three four five six.") as good:
        # The failing deployment is heavily preferred, so most requests try it first and fail
        # over; its breaker never opens (it would keep requests away and change nothing here).
        deployments = [
            azure_deployment(bad, name="bad", weight=100.0, rpm=1000),
            azure_deployment(good, name="good", rpm=1000),
        ]
        async with open_gateway(
            database_url,
            deployments=deployments,
            breaker={"failures": 1000},
            metrics={"bind": "127.0.0.1:0", "sample_seconds": 60.0},
        ) as gw:
            _, key = await gw.funded_account("5.00")
            _, broke = await gw.funded_account("0")
            bad.fail_next(500, count=1000)
            ids: list[str] = []
            async with httpx.AsyncClient(timeout=20) as client:
                for _ in range(4):  # JSON
                    response = await chat(client, gw, key)
                    assert response.status_code == 200, response.text
                    ids.append(response.headers["x-request-id"])
                for _ in range(3):  # streamed
                    response = await chat(client, gw, key, stream=True)
                    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")
                    ids.append(response.headers["x-request-id"])
                refused = await client.post(  # bad input: refused before any hold
                    f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={"model": MODEL}
                )
                assert refused.status_code == 400
                poor = await chat(client, gw, broke)  # no money: refused by the wallet
                assert poor.status_code == 402
                ids.append(poor.headers["x-request-id"])
                # An abandoned stream: the client leaves after the first content.
                good.chunk_delay = 0.2
                async with client.stream(
                    "POST",
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": MESSAGES, "max_tokens": 20, "stream": True},
                ) as response:
                    abandoned = response.headers["x-request-id"]
                    async for chunk in response.aiter_raw():
                        if b'"content":"' in chunk:
                            break
                ids.append(abandoned)
                with trio.fail_after(10):
                    await good.wait_disconnected()
            rows = [await gw.request_log(request_id) for request_id in ids]
            assert rows[-1].status == "client_closed" and rows[-2].status == "insufficient_balance"
            await gw.flushed()

            unauthorised = await scrape(f"{gw.root_url}/metrics", token=None)
            assert unauthorised.status_code == 401
            response = await scrape(f"{gw.root_url}/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = response.text
            samples = parse(text)
            # The listener of its own samples first too (sample_seconds is 60 here).
            on_bind = parse((await scrape(gw.gateway.metrics_url, token=None)).text)
            assert value(on_bind, "omixa_deployment_window_used", deployment="good", window="rpm") == 8
            assert value(on_bind, "omixa_requests_total") == len(ids)

        chat_ok = dict(api="chat", model=MODEL, status="ok")
        assert value(samples, "omixa_requests_total", stream="false", **chat_ok) == 4
        assert value(samples, "omixa_requests_total", stream="true", **chat_ok) == 3
        assert value(samples, "omixa_requests_total", stream="true", status="client_closed") == 1
        assert value(samples, "omixa_requests_total", status="insufficient_balance") == 1
        assert value(samples, "omixa_requests_total") == len(ids)
        assert value(samples, "omixa_request_duration_seconds_count", stream="false") == 5
        assert value(samples, "omixa_request_duration_seconds_count", stream="true") == 4
        assert value(samples, "omixa_time_to_first_token_seconds_count") == 4  # every stream had content
        # Attempts: one per call that reached a deployment, plus one per failover from "bad".
        failed = len(bad.requests)
        assert failed >= 1
        assert value(samples, "omixa_request_attempts_count") == 8
        assert value(samples, "omixa_request_attempts_sum") == 8 + failed
        assert value(samples, "omixa_failovers_total", deployment="bad") == failed
        assert value(samples, "omixa_upstream_attempts_total", deployment="bad", outcome="server_error") == failed
        assert value(samples, "omixa_upstream_attempts_total", deployment="good", outcome="ok") == 7
        assert value(samples, "omixa_upstream_attempts_total", deployment="good", outcome="cancelled") == 1
        assert value(samples, "omixa_upstream_attempts_total") == 8 + failed
        assert value(samples, "omixa_upstream_duration_seconds_count") == 8 + failed
        assert value(samples, "omixa_hold_wait_seconds_count") == 8
        assert value(samples, "omixa_settle_wait_seconds_count") == 8
        # Tokens and money: exactly the request logs' sums.
        assert value(samples, "omixa_tokens_total", kind="prompt") == sum(r.prompt_tokens for r in rows) > 0
        assert value(samples, "omixa_tokens_total", kind="completion") == sum(r.completion_tokens for r in rows) > 0
        assert value(samples, "omixa_charged_nano_usd_total", model=MODEL) == sum(r.cost for r in rows) > 0
        # HTTP: every answer by route, status and code (the bad input's code as sent).
        route = dict(route="/api/v1/chat/completions", method="POST")
        assert value(samples, "omixa_http_requests_total", status="200", code="", **route) == 8
        code = refused.json()["error"]["code"]
        assert value(samples, "omixa_http_requests_total", status="400", code=code, **route) == 1
        assert value(samples, "omixa_http_requests_total", status="402", code="insufficient_balance", **route) == 1
        assert value(samples, "omixa_http_requests_total", route="/metrics", status="401") == 1
        # Deployments (sampled at the scrape): windows, health, the model's healthy deployments.
        assert value(samples, "omixa_deployment_window_used", deployment="good", window="rpm") == 8
        assert value(samples, "omixa_deployment_window_used", deployment="bad", window="rpm") == failed
        assert value(samples, "omixa_deployment_window_limit", deployment="good", window="rpm") == 1000
        assert value(samples, "omixa_deployment_health", deployment="bad", state="closed") == 1
        assert value(samples, "omixa_deployment_in_flight") == 0
        assert value(samples, "omixa_model_healthy_deployments", model=MODEL) == 2
        assert value(samples, "omixa_model_enabled_deployments", model=MODEL) == 2
        # Money and the engine: nothing pending or open any more; the logs written.
        assert value(samples, "omixa_holds_pending") == 0
        assert value(samples, "omixa_money_locked_nano_usd") == 0
        assert value(samples, "omixa_open_streams") == 0
        assert value(samples, "omixa_usage_logs_written_total") == len(ids)
        assert value(samples, "omixa_usage_logs_dropped_total") == 0
        assert value(samples, "omixa_db_call_seconds_count", call="insert_request_logs") >= 1
        assert value(samples, "omixa_db_connections", state="max") >= 1
        assert value(samples, "omixa_ready") == 1
        assert value(samples, "omixa_build_info") == 1
        promtool_check(text)


async def test_a_breaker_that_opens_and_a_429_cooldown_are_counted(database_url, monkeypatch):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    async with open_fake_azure() as fake:
        async with open_gateway(
            database_url,
            fake,
            breaker={"failures": 2, "cooldown_seconds": 30.0},
            upstream={"max_attempts": 1},
        ) as gw:
            _, key = await gw.funded_account("1.00")
            fake.rate_limit_next(7, retry_after_ms=100)
            fake.fail_next(500, count=2)
            async with httpx.AsyncClient(timeout=20) as client:
                assert (await chat(client, gw, key)).status_code == 503  # Azure's 429: no room
                await trio.sleep(0.2)  # the cooldown passes
                assert (await chat(client, gw, key)).status_code == 502
                assert (await chat(client, gw, key)).status_code == 502
                assert (await chat(client, gw, key)).status_code == 503  # the breaker is open
            samples = parse((await scrape(f"{gw.root_url}/metrics")).text)
        labels = dict(deployment="eastus-1", model=MODEL)
        assert value(samples, "omixa_deployment_cooldowns_total", **labels) == 1
        assert value(samples, "omixa_deployment_breaker_opens_total", **labels) == 1
        assert value(samples, "omixa_deployment_health", state="open", **labels) == 1
        assert value(samples, "omixa_model_healthy_deployments", model=MODEL) == 0
        assert value(samples, "omixa_upstream_attempts_total", outcome="rate_limited") == 1
        assert value(samples, "omixa_upstream_attempts_total", outcome="server_error") == 2
        assert value(samples, "omixa_requests_total", status="no_healthy_deployment") == 2
        assert value(samples, "omixa_requests_total", status="upstream_error") == 2


async def test_metrics_need_the_admin_token_or_their_own_listener(tmp_path, monkeypatch):
    monkeypatch.delenv("OMIXA_ADMIN_TOKEN", raising=False)
    async with open_fake_azure() as fake, open_gateway(f"sqlite:///{tmp_path / 'm.db'}", fake) as gw:
        assert (await scrape(f"{gw.root_url}/metrics")).status_code == 404  # no token set: no route
        assert gw.gateway.metrics_url is None
    async with (
        open_fake_azure() as fake,
        open_gateway(f"sqlite:///{tmp_path / 'n.db'}", fake, metrics={"bind": "127.0.0.1:0"}) as gw,
    ):
        assert gw.gateway.metrics_url is not None
        response = await scrape(gw.gateway.metrics_url, token=None)
        assert response.status_code == 200 and "\nomixa_requests_total{" not in response.text  # none yet
        assert "# TYPE omixa_requests_total counter" in response.text


async def test_metrics_off_means_no_route_and_nothing_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    async with (
        open_fake_azure() as fake,
        open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake, metrics={"enabled": False}) as gw,
    ):
        _, key = await gw.funded_account("1.00")
        async with httpx.AsyncClient(timeout=20) as client:
            assert (await chat(client, gw, key)).status_code == 200
        assert gw.engine.metrics is None
        assert (await scrape(f"{gw.root_url}/metrics")).status_code == 404


@pytest.mark.slow
async def test_workers_share_one_exposition_and_a_killed_workers_counts_stay(postgres_url, aio_loop, tmp_path):
    """``omixa serve --workers 2``: whichever worker answers ``/metrics``, and the
    supervisor's ``[metrics] bind``, report the sum over both; a worker killed with SIGKILL
    keeps its counts, and its restarted successor adds to them."""
    async with open_fake_azure() as fake:
        config = tmp_path / "omixa.toml"
        config.write_text(
            f'[storage]\nurl = "{postgres_url}"\n[limits]\nkey_rpm = 0\n'
            '[metrics]\nbind = "127.0.0.1:0"\n'
            "[wallet]\ninstance_heartbeat_seconds = 1\ninstance_stale_seconds = 3\n"
            f'[[deployments]]\nname = "e1"\nmodel = "{MODEL}"\nendpoint = "{fake.endpoint}"\n'
            'deployment = "d"\napi_key = "env:FAKE_AZURE_KEY"\n'
        )
        _, key = await funded_key(postgres_url, aio_loop)
        env = {**os.environ, "FAKE_AZURE_KEY": fake.api_key, "OMIXA_ADMIN_TOKEN": ADMIN}
        process = await trio.lowlevel.open_process(
            [OMIXA, "serve", "--config", str(config), "--port", "0", "--workers", "2"], stdout=subprocess.PIPE, env=env
        )
        try:
            found = await read_values(process, {"OMIXA_BASE_URL", "OMIXA_METRICS_URL"})
            base_url, metrics_url = found["OMIXA_BASE_URL"], found["OMIXA_METRICS_URL"]
            root = base_url.removesuffix("/api/v1")

            async def send(count: int) -> None:
                # A connection each, so the kernel spreads them over the workers.
                for _ in range(count):
                    async with httpx.AsyncClient(timeout=20) as client:
                        response = await client.post(
                            f"{base_url}/chat/completions",
                            headers={"Authorization": f"Bearer {key}"},
                            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5},
                        )
                        assert response.status_code == 200, response.text

            async def totals() -> list[dict]:
                """The supervisor's exposition, and several through the API's port."""
                scrapes = [parse((await scrape(metrics_url, token=None)).text)]
                for _ in range(6):
                    scrapes.append(parse((await scrape(f"{root}/metrics")).text))
                return scrapes

            await send(10)
            for samples in await totals():
                assert value(samples, "omixa_requests_total", status="ok") == 10
                assert value(samples, "omixa_upstream_attempts_total", outcome="ok") == 10
                assert value(samples, "omixa_request_duration_seconds_count") == 10
                assert value(samples, "omixa_build_info") == 1  # livemax: one, not one per worker
                assert value(samples, "omixa_db_connections", state="max") >= 2  # livesum: both pools
            pids = await worker_pids(postgres_url, aio_loop)
            assert len(pids) == 2
            os.kill(pids.pop(), signal.SIGKILL)
            with trio.fail_after(60):  # restarted (a new pid) and serving
                while len(await worker_pids(postgres_url, aio_loop) - pids) < 1:
                    await trio.sleep(0.2)
            await send(4)
            for samples in await totals():
                assert value(samples, "omixa_requests_total", status="ok") == 14
                assert value(samples, "omixa_build_info") == 1
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0


async def test_pending_holds_are_read_from_the_database(database_url, monkeypatch):
    """Holds pending anywhere (here: written straight to the database, as another process
    would) show in the money gauges at the next scrape, and leave them when voided."""
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, _ = await gw.funded_account("1.00")
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        holds = [
            await gw.storage.create_hold(account_id=account, request_id=f"req_{i}", amount=amount, expires_at=expires)
            for i, amount in enumerate((1_000, 2_500))
        ]
        await trio.sleep(0.3)
        samples = parse((await scrape(f"{gw.root_url}/metrics")).text)
        assert value(samples, "omixa_holds_pending") == 2
        assert value(samples, "omixa_money_locked_nano_usd") == 3_500
        assert 0.2 <= value(samples, "omixa_holds_oldest_age_seconds") < 60
        for hold in holds:
            await gw.storage.void_hold(hold.id)
        samples = parse((await scrape(f"{gw.root_url}/metrics")).text)
        assert value(samples, "omixa_holds_pending") == 0
        assert value(samples, "omixa_money_locked_nano_usd") == 0
        assert value(samples, "omixa_holds_oldest_age_seconds") == 0


async def test_an_upstreams_own_codes_are_kept_when_known_and_bounded_when_not(tmp_path, monkeypatch):
    monkeypatch.setenv("OMIXA_ADMIN_TOKEN", ADMIN)
    async with open_fake_azure() as fake, open_gateway(f"sqlite:///{tmp_path / 'c.db'}", fake) as gw:
        _, key = await gw.funded_account("1.00")
        fake.fail_next(400, content_filter_error())
        fake.fail_next(400, {"error": {"code": "brand_new_code_42", "message": "Something new."}})
        async with httpx.AsyncClient(timeout=20) as client:
            filtered, odd = await chat(client, gw, key), await chat(client, gw, key)
        assert (filtered.status_code, filtered.json()["error"]["code"]) == (400, "content_filter")
        assert (odd.status_code, odd.json()["error"]["code"]) == (400, "brand_new_code_42")  # the client sees it
        samples = parse((await scrape(f"{gw.root_url}/metrics")).text)
    assert value(samples, "omixa_requests_total", status="content_filter") == 1
    assert value(samples, "omixa_http_requests_total", code="content_filter") == 1
    assert value(samples, "omixa_requests_total", status="upstream_other") == 1  # labels stay bounded
    assert value(samples, "omixa_http_requests_total", code="upstream_other") == 1
    assert not any("brand_new_code_42" in str(labels) for _, labels in samples)
