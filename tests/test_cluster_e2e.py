"""Three ``omixa serve`` processes on one PostgreSQL and one Redis behave as one gateway: the
upstream never sees more than a deployment's limits, health learned by one is honoured by
all, money stays exact, and a Redis outage neither fails requests nor exceeds a limit."""

from __future__ import annotations

import time

import httpx
import pytest
import trio
from cluster_helpers import chat, cluster_config, funded_key, serve_processes, upstream_chats
from fake_azure import open_fake_azure
from harness import ledger_verify_cli

from omixa.engine.accounts import Accounts
from omixa.engine.secretbox import secret_box_from_env
from omixa.storage import open_storage
from omixa_client import signature_headers

pytestmark = pytest.mark.slow


async def burst(processes, key: str, count: int, concurrency: int = 40, **body) -> list[httpx.Response]:
    """``count`` chat requests spread over the processes, ``concurrency`` at a time."""
    responses: list[httpx.Response] = []
    limiter = trio.CapacityLimiter(concurrency)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def one(i: int) -> None:
            async with limiter:
                responses.append(await chat(client, processes[i % len(processes)].base_url, key, **body))

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    return responses


def assert_only_no_room(responses: list[httpx.Response], span: int = 60) -> None:
    """Every request was served or refused for want of room, with a Retry-After within the
    window's span."""
    for response in responses:
        if response.status_code != 200:
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "no_healthy_deployment"
            assert 1 <= int(response.headers["Retry-After"]) <= span + 1


async def test_three_processes_keep_the_upstream_within_its_rpm(postgres_url, redis_server, aio_loop, tmp_path):
    async with open_fake_azure() as fake:
        config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake, "rpm = 30")
        _, key = await funded_key(postgres_url, aio_loop)
        async with serve_processes(config, 3, fake) as processes:
            started = time.monotonic()
            responses = await burst(processes, key, 200)
            ok = [r for r in responses if r.status_code == 200]
            assert len(upstream_chats(fake)) == len(ok) <= 30
            assert len(ok) >= 20  # the shared window, not a per-process share, decided
            assert_only_no_room(responses)
            # A refusal's Retry-After is honoured: once it has passed, a request gets through,
            # and not before the first admissions left the window.
            async with httpx.AsyncClient(timeout=30) as client:
                refused = await chat(client, processes[2].base_url, key)
                assert refused.status_code == 503
                wait = int(refused.headers["Retry-After"])
                assert 61 - (time.monotonic() - started) - 2 <= wait <= 61 - (time.monotonic() - started) + 2
                await trio.sleep(wait)
                again = await chat(client, processes[1].base_url, key)
            assert again.status_code == 200, again.text
            assert time.monotonic() - started >= 59


async def test_three_processes_keep_the_upstream_within_tpm_and_hourly_tokens(
    postgres_url, redis_server, aio_loop, tmp_path
):
    # Each request is estimated at its prompt + max_tokens (about 510 tokens) and really uses
    # about 30: the estimate is corrected, so more than limit / estimate requests get through,
    # and the tokens the upstream really served never exceed the limit.
    for limit in ("tpm = 3000", "hourly_tokens = 3000"):
        async with open_fake_azure(reply="short answer " * 5) as fake:
            config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake, limit)
            _, key = await funded_key(postgres_url, aio_loop)
            async with serve_processes(config, 3, fake) as processes:
                responses = await burst(processes, key, 120, concurrency=6, max_tokens=500)
                ok = [r for r in responses if r.status_code == 200]
                used = sum(r.json()["usage"]["total_tokens"] for r in ok)
                assert used <= 3000, (limit, used)
                assert len(ok) > 3000 // 510 + 3, (limit, len(ok))  # corrections freed room
                assert len(ok) < 120  # and the limit did refuse
                assert_only_no_room(responses, 60 if limit.startswith("tpm") else 3600)
        redis_server.command("FLUSHALL")


async def test_a_429_learned_by_one_process_keeps_every_process_off(postgres_url, redis_server, aio_loop, tmp_path):
    async with open_fake_azure() as fake:
        config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake)
        _, key = await funded_key(postgres_url, aio_loop)
        async with serve_processes(config, 3, fake) as processes, httpx.AsyncClient(timeout=30) as client:
            assert (await chat(client, processes[0].base_url, key)).status_code == 200
            fake.rate_limit_next(3, retry_after_ms=3000)
            limited = await chat(client, processes[0].base_url, key)
            assert limited.status_code == 503 and limited.json()["error"]["code"] == "no_healthy_deployment"
            hit = upstream_chats(fake)[-1].at
            while time.monotonic() < hit + 2.5:
                for process in processes[1:]:
                    refused = await chat(client, process.base_url, key)
                    assert refused.status_code == 503, refused.text
                await trio.sleep(0.1)
            assert upstream_chats(fake, since=hit) == []
            await trio.sleep(max(0.0, hit + 3.1 - time.monotonic()))
            assert (await chat(client, processes[2].base_url, key)).status_code == 200


async def test_a_breaker_opened_in_one_process_keeps_the_others_off(postgres_url, redis_server, aio_loop, tmp_path):
    async with open_fake_azure() as fake:
        config = cluster_config(
            tmp_path / "omixa.toml", postgres_url, redis_server.url, fake,
            extra="[breaker]\nfailures = 2\ncooldown_seconds = 4",
        )  # fmt: skip
        _, key = await funded_key(postgres_url, aio_loop)
        async with serve_processes(config, 3, fake) as processes, httpx.AsyncClient(timeout=30) as client:
            fake.fail_next(500, count=2)
            for _ in range(2):
                assert (await chat(client, processes[0].base_url, key)).status_code != 200
            opened = upstream_chats(fake)[-1].at
            while time.monotonic() < opened + 3:
                for process in processes[1:]:
                    refused = await chat(client, process.base_url, key)
                    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_healthy_deployment"
                await trio.sleep(0.1)
            assert upstream_chats(fake, since=opened) == []
            await trio.sleep(max(0.0, opened + 4.2 - time.monotonic()))
            # One probe closes it; then every process serves again.
            for process in processes:
                assert (await chat(client, process.base_url, key)).status_code == 200


async def test_500_paid_requests_on_one_wallet_over_three_processes(postgres_url, redis_server, aio_loop, tmp_path):
    async with open_fake_azure() as fake:
        config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake)
        # Enough for some of the 500, not all.
        account_id, key = await funded_key(postgres_url, aio_loop, nano_usd=1_000_000)
        async with serve_processes(config, 3, fake) as processes:
            responses = await burst(processes, key, 500, concurrency=100)
        statuses = {r.status_code for r in responses}
        assert 200 in statuses and 402 in statuses and statuses <= {200, 402}
        async with open_storage(postgres_url, loop=aio_loop) as storage:
            wallet = await storage.get_wallet(account_id)
            assert wallet.balance >= 0 and wallet.locked == 0
            assert await storage.verify_ledger() == []
        await ledger_verify_cli(postgres_url, tmp_path)


async def test_redis_stopped_mid_run_neither_fails_requests_nor_exceeds_a_limit(
    postgres_url, redis_server, aio_loop, tmp_path
):
    async with open_fake_azure() as fake:
        config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake, "rpm = 60")
        _, key = await funded_key(postgres_url, aio_loop)
        async with serve_processes(config, 3, fake) as processes:
            started = time.monotonic()
            assert all(r.status_code == 200 for r in await burst(processes, key, 12, concurrency=3))
            redis_server.stop()
            during = await burst(processes, key, 24, concurrency=3)
            # Each process: 60 // 3 = 20, less the 12 the shared window held: 8 each.
            assert all(r.status_code == 200 for r in during), [r.text for r in during if r.status_code != 200]
            redis_server.start()
            await trio.sleep(2.5)  # every process retries within retry_seconds (1 s)
            assert redis_server.command("KEYS", "omixa:deployment:*rpm*") != b"*0\r\n"  # the shared windows again
            after = await burst(processes, key, 100, concurrency=10)
            assert_only_no_room(after)
            assert time.monotonic() - started < 60
            assert len(upstream_chats(fake)) <= 60


async def test_a_keys_rpm_holds_across_processes(postgres_url, redis_server, aio_loop, tmp_path):
    async with open_fake_azure() as fake:
        config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake)
        _, key = await funded_key(postgres_url, aio_loop, rpm=10)
        async with serve_processes(config, 3, fake) as processes:
            responses = await burst(processes, key, 40, concurrency=20)
            ok = [r for r in responses if r.status_code == 200]
            limited = [r for r in responses if r.status_code == 429]
            assert len(ok) == 10 and len(limited) == 30 and len(upstream_chats(fake)) == 10
            for response in limited:
                assert response.json()["error"]["code"] == "rate_limited"
                assert 1 <= int(response.headers["Retry-After"]) <= 61
            # Every process reports the fleet's count in its headers.
            async with httpx.AsyncClient(timeout=30) as client:
                for process in processes:
                    wallet = await client.get(f"{process.base_url}/wallet", headers={"Authorization": f"Bearer {key}"})
                    assert wallet.headers["x-ratelimit-limit-requests"] == "10"
                    assert wallet.headers["x-ratelimit-remaining-requests"] == "0"


async def test_a_nonce_replayed_to_another_process_is_refused(
    postgres_url, redis_server, aio_loop, tmp_path, secret_key
):
    async with open_fake_azure() as fake:
        config = cluster_config(tmp_path / "omixa.toml", postgres_url, redis_server.url, fake)
        async with open_storage(postgres_url, loop=aio_loop) as storage:
            accounts = Accounts(storage, secret_box_from_env())
            account = await accounts.create_account("dev@example.com")
            new = await accounts.create_key(account.id, signature_required=True)
        assert new.signing_secret is not None
        async with serve_processes(config, 3, fake) as processes, httpx.AsyncClient(timeout=30) as client:
            headers = {
                "Authorization": f"Bearer {new.secret}",
                **signature_headers(new.signing_secret, "GET", "/api/v1/wallet"),
            }
            first = await client.get(f"{processes[0].base_url}/wallet", headers=headers)
            assert first.status_code == 200, first.text
            for process in processes:
                again = await client.get(f"{process.base_url}/wallet", headers=headers)
                assert again.status_code == 401 and again.json()["error"]["code"] == "replayed_request"
            fresh = {**headers, **signature_headers(new.signing_secret, "GET", "/api/v1/wallet")}
            assert (await client.get(f"{processes[2].base_url}/wallet", headers=fresh)).status_code == 200
