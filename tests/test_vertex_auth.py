"""Vertex service-account auth against a fake Google token endpoint (real HTTP, real RS256).

The fake verifies each JWT assertion with the service account's public key. Time for the
token cache is driven by a clock the test holds, so "an hour later" takes no time.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import trio
from fake_vertex import DEFAULT_REPLY, open_fake_vertex
from harness import open_gateway
from test_vertex_e2e import MESSAGES, MODEL, vertex_deployment

from omixa.engine.catalog import load_catalog
from omixa.engine.config import BreakerConfig, UpstreamConfig
from omixa.engine.config_loader import structure_config
from omixa.engine.errors import UpstreamError
from omixa.engine.fleet import Fleet
from omixa.engine.providers.google_auth import REFRESH_MARGIN, ServiceAccountTokens, load_service_account
from omixa.engine.router import Router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_tokens_are_cached_and_refreshed_before_expiry(tmp_path):
    async with open_fake_vertex(token_lifetime=3600) as fake, httpx.AsyncClient() as client:
        account = load_service_account(fake.write_service_account(tmp_path))
        clock = Clock()
        tokens = ServiceAccountTokens(account, client, clock=clock)
        first = await tokens.token()
        assert first == fake.tokens_issued[0] and fake.token_requests == 1
        clock.now += 3600 - REFRESH_MARGIN - 1  # still outside the margin: cached
        assert await tokens.token() == first and fake.token_requests == 1
        clock.now += 2  # inside the margin, not yet expired: refreshed
        second = await tokens.token()
        assert second == fake.tokens_issued[1] != first and fake.token_requests == 2


async def test_one_refresh_in_flight_serves_every_waiting_caller(tmp_path):
    async with open_fake_vertex(token_delay=0.2) as fake, httpx.AsyncClient() as client:
        tokens = ServiceAccountTokens(load_service_account(fake.write_service_account(tmp_path)), client)
        got: list[str] = []
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(lambda: _append(got, tokens.token()))
        assert fake.token_requests == 1 and got == [fake.tokens_issued[0]] * 10


async def _append(out: list[str], awaitable) -> None:
    out.append(await awaitable)


async def test_token_failures_are_clear_and_a_still_valid_token_is_kept(tmp_path):
    async with open_fake_vertex() as fake, httpx.AsyncClient() as client:
        clock = Clock()
        tokens = ServiceAccountTokens(load_service_account(fake.write_service_account(tmp_path)), client, clock=clock)
        fake.fail_token_next(400, "invalid_grant")
        with pytest.raises(UpstreamError) as caught:
            await tokens.token()
        # A refused assertion is the operator's problem: 401, reported to clients as 502.
        assert caught.value.upstream_status == 401
        assert "token endpoint answered HTTP 400 (Fake token failure (invalid_grant).)" in caught.value.message
        token = await tokens.token()
        clock.now += 3599 - REFRESH_MARGIN + 10  # due for refresh, not expired
        fake.fail_token_next(503, "backend_error")
        assert await tokens.token() == token
        clock.now += REFRESH_MARGIN  # expired: the failure now surfaces, with Google's 5xx
        fake.fail_token_next(503, "backend_error")
        with pytest.raises(UpstreamError) as caught:
            await tokens.token()
        assert caught.value.upstream_status == 503


async def test_a_forged_key_is_refused_by_the_token_endpoint(tmp_path):
    async with open_fake_vertex() as fake, httpx.AsyncClient() as client:
        genuine = fake.write_service_account(tmp_path)
        other = tmp_path / "other"
        other.mkdir()
        async with open_fake_vertex() as impostor:
            forged = json.loads(impostor.write_service_account(other).read_text())
        forged["token_uri"] = fake.token_uri  # signed by a key the fake does not know
        forged_path = other / "forged.json"
        forged_path.write_text(json.dumps(forged))
        assert genuine.exists()
        tokens = ServiceAccountTokens(load_service_account(forged_path), client)
        with pytest.raises(UpstreamError, match="invalid_grant|Invalid JWT"):
            await tokens.token()
        assert fake.tokens_issued == []


async def test_the_gateway_calls_vertex_with_a_service_account_token(database_url, tmp_path):
    async with open_fake_vertex() as fake:
        path = fake.write_service_account(tmp_path)
        deployment = vertex_deployment(fake, service_account_file=str(path))
        del deployment["project"]  # taken from the key file's project_id
        async with open_gateway(database_url, deployments=[deployment]) as gw:
            _, key = await gw.funded_account("1.00")
            client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
            for _ in range(3):
                completion = await trio.to_thread.run_sync(
                    lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES)
                )
                assert completion.choices[0].message.content == DEFAULT_REPLY
            chunks = await trio.to_thread.run_sync(
                lambda: list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_REPLY
        assert fake.token_requests == 1  # one token for every call
        assert {r.headers["authorization"] for r in fake.requests} == {f"Bearer {fake.tokens_issued[0]}"}
        assert all("x-goog-api-key" not in r.headers for r in fake.requests)
        assert fake.requests[0].path.startswith("/v1/projects/fake-project/locations/us-central1/")


async def test_a_bad_token_endpoint_answer_is_a_502_and_costs_nothing(database_url, tmp_path, caplog):
    """A refused service account is the operator's setup: the developer gets a plain 502,
    the operator's log gets the token endpoint's answer."""
    async with open_fake_vertex() as fake:
        deployment = vertex_deployment(fake, service_account_file=str(fake.write_service_account(tmp_path)))
        async with open_gateway(database_url, deployments=[deployment]) as gw:
            account, key = await gw.funded_account("1.00")
            fake.fail_token_next(401, "unauthorized_client")
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": MESSAGES},
                )
            assert response.status_code == 502
            assert response.json()["error"]["message"] == "The upstream could not serve this request."
            assert any("Vertex auth failed" in r.getMessage() for r in caplog.records)
            wallet = await gw.storage.get_wallet(account)
            assert wallet.locked == 0 and await gw.storage.verify_ledger() == []
        assert fake.requests == []


def test_service_account_files_are_checked_at_start_up(tmp_path):
    """The config only settles the file's path; the fleet's check, which runs at start-up and
    before a reload applies, has the Vertex adapter read the file."""
    base = {"name": "v", "model": MODEL, "provider": "vertex", "location": "us-central1"}
    fleet = Fleet(catalog=load_catalog(None), upstream=UpstreamConfig(), breaker=BreakerConfig(), router=Router())

    def load(**extra):
        config = structure_config({"deployments": [{**base, **extra}]}, base_dir=tmp_path)
        fleet.check(config.deployments)
        return config

    with pytest.raises(ValueError, match=r"deployment 'v': service_account_file: .*cannot read"):
        load(service_account_file="missing.json")
    (tmp_path / "bad.json").write_text('{"type": "authorized_user"}')
    with pytest.raises(ValueError, match="not a service account key"):
        load(service_account_file="bad.json")
    (tmp_path / "nokey.json").write_text(json.dumps({
        "type": "service_account", "client_email": "a@b", "token_uri": "http://x/token",
        "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"}))  # fmt: skip
    with pytest.raises(ValueError, match="private_key is not a PEM private key"):
        load(service_account_file="nokey.json")
    from fake_vertex import FakeVertex

    sa = FakeVertex(endpoint="http://127.0.0.1:9").write_service_account(tmp_path, project_id=None)
    with pytest.raises(ValueError, match=r"deployment 'v': project: required"):
        load(service_account_file=sa.name)
    dep = load(service_account_file=sa.name, project="mine").deployments[0]
    assert (dep.project, dep.service_account_file, dep.region, dep.deployment) == (
        "mine",
        str(sa),
        "us-central1",
        MODEL,
    )


async def test_a_short_lived_token_is_used_for_half_its_life(tmp_path):
    async with open_fake_vertex(token_lifetime=120) as fake, httpx.AsyncClient() as client:
        clock = Clock()
        tokens = ServiceAccountTokens(load_service_account(fake.write_service_account(tmp_path)), client, clock=clock)
        await tokens.token()
        clock.now += 59
        await tokens.token()
        assert fake.token_requests == 1
        clock.now += 2
        await tokens.token()
        assert fake.token_requests == 2


def test_the_fleet_sees_the_project_a_service_account_file_names(tmp_path):
    """With no project in the config, the file's project_id is the deployment's, as the fleet
    checks it; a reload after the file changed therefore sees a changed deployment (and
    gives it a new adapter)."""
    from fake_vertex import FakeVertex

    fleet = Fleet(catalog=load_catalog(None), upstream=UpstreamConfig(), breaker=BreakerConfig(), router=Router())
    raw = {"name": "v", "model": MODEL, "provider": "vertex", "location": "us-central1"}
    fake = FakeVertex(endpoint="http://127.0.0.1:9")
    sa = fake.write_service_account(tmp_path, project_id="first")
    config = structure_config({"deployments": [{**raw, "service_account_file": sa.name}]}, base_dir=tmp_path)
    assert config.deployments[0].project == ""  # the loader does not read the file
    (first,) = fleet.check(config.deployments)
    fake.write_service_account(tmp_path, project_id="second")
    (second,) = fleet.check(config.deployments)
    assert (first.project, second.project) == ("first", "second")
