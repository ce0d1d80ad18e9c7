"""service_tier "priority": sent only to deployments with priority processing, held at the
priority price, billed at the tier the answer reports (Azure may downgrade), on both
backends."""

from __future__ import annotations

import httpx
import openai
import trio
from fake_azure import DEFAULT_REPLY, open_fake_azure
from harness import azure_deployment, open_gateway

from omixa.engine.catalog import cost_of, load_catalog, max_cost
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import Usage

MODEL = "gpt-5.1"
INFO = load_catalog().get(MODEL)
MESSAGES = [{"role": "user", "content": "Quick, say something."}]
PROMPT = count_chat_prompt({"messages": MESSAGES})
CAP = 1000
USAGE = Usage(prompt_tokens=PROMPT, completion_tokens=count_text(DEFAULT_REPLY))


def deployments(fake, *, priority_enabled: bool = True) -> list[dict]:
    return [
        azure_deployment(fake, name="fast", model=MODEL, deployment="fast-dz", priority=priority_enabled),
        azure_deployment(fake, name="plain", model=MODEL, deployment="plain-dz"),
    ]


async def paid(gw, account: str) -> tuple[int, int]:
    """(hold amount, charge) of the account's only request."""
    entries = await gw.settled_entries(account)
    hold = [e.amount for e in entries if e.type == "hold"]
    charge = [e.amount for e in entries if e.type == "charge"]
    assert len(hold) == 1 and len(charge) == 1
    assert await gw.storage.verify_ledger() == []
    return hold[0], charge[0]


async def test_priority_goes_to_the_priority_deployment_and_is_billed_at_priority(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, deployments=deployments(fake)) as gw:
        account, key = await gw.funded_account("10.00")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        answer = await trio.to_thread.run_sync(lambda: client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_completion_tokens=CAP, service_tier="priority"))  # fmt: skip
        assert answer.service_tier == "priority"
        sent = fake.requests[-1]
        # Priority deployments are tried first; only they get the tier.
        assert sent.deployment == "fast-dz" and sent.json["service_tier"] == "priority"
        hold, charge = await paid(gw, account)
        assert hold == max_cost(PROMPT, CAP, INFO.priority_prices)
        assert charge == cost_of(USAGE, INFO.priority_prices)
        row = await gw.request_log((await gw.storage.ledger_entries(account))[1].request_id)
        assert row.cost == charge and row.deployment == "fast"


async def test_a_downgraded_answer_is_billed_at_the_standard_price(database_url):
    async with (
        open_fake_azure(downgrade_priority=True) as fake,
        open_gateway(database_url, fake, deployments=deployments(fake)) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            body = {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": CAP,
                    "service_tier": "priority", "stream": True}  # fmt: skip
            response = await client.post(f"{gw.base_url}/chat/completions", json=body)
        assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")
        assert '"service_tier":"default"' in response.text
        assert fake.requests[-1].json["service_tier"] == "priority"
        hold, charge = await paid(gw, account)
        assert hold == max_cost(PROMPT, CAP, INFO.priority_prices)  # it might have been priority
        assert charge == cost_of(USAGE, INFO.prices)


async def test_priority_streams_are_billed_at_the_tier_of_their_frames(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, deployments=deployments(fake)) as gw:
        account, key = await gw.funded_account("10.00")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            body = {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": CAP,
                    "service_tier": "priority", "stream": True}  # fmt: skip
            response = await client.post(f"{gw.base_url}/chat/completions", json=body)
        assert response.status_code == 200 and '"service_tier":"priority"' in response.text
        _, charge = await paid(gw, account)
        assert charge == cost_of(USAGE, INFO.priority_prices)


async def test_other_requests_get_an_explicit_default_tier_or_none(database_url):
    """A request that did not ask for priority is never billed at it: a priority deployment
    gets service_tier "default", any other deployment no service_tier."""
    async with open_fake_azure() as fake, open_gateway(database_url, fake, deployments=deployments(fake)) as gw:
        account, key = await gw.funded_account("10.00")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            for tier in (None, "auto", "default", "flex", "scale") * 5:
                body = {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": CAP}
                if tier:
                    body["service_tier"] = tier
                response = await client.post(f"{gw.base_url}/chat/completions", json=body)
                assert response.status_code == 200
                sent = fake.requests[-1]
                if sent.deployment == "fast-dz":
                    assert sent.json["service_tier"] == "default"
                else:
                    assert "service_tier" not in sent.json
        assert {r.deployment for r in fake.requests} == {"fast-dz", "plain-dz"}
        entries = await gw.storage.ledger_entries(account)
        holds = [e.amount for e in entries if e.type == "hold"]
        charges = [e.amount for e in entries if e.type == "charge"]
        assert set(holds) == {max_cost(PROMPT, CAP, INFO.prices)}
        assert set(charges) == {cost_of(USAGE, INFO.prices)}
        assert await gw.storage.verify_ledger() == []


async def test_without_a_priority_deployment_the_tier_is_omitted_and_held_at_standard(database_url):
    async with (
        open_fake_azure() as fake,
        open_gateway(database_url, fake, deployments=deployments(fake, priority_enabled=False)) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            body = {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": CAP, "service_tier": "priority"}
            response = await client.post(f"{gw.base_url}/chat/completions", json=body)
        assert response.status_code == 200
        assert "service_tier" not in fake.requests[-1].json
        hold, charge = await paid(gw, account)
        assert (hold, charge) == (max_cost(PROMPT, CAP, INFO.prices), cost_of(USAGE, INFO.prices))


async def test_failover_from_the_priority_deployment_drops_the_tier(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake, deployments=deployments(fake)) as gw:
        account, key = await gw.funded_account("10.00")
        fake.rate_limit_next(7)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            body = {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": CAP, "service_tier": "priority"}
            response = await client.post(f"{gw.base_url}/chat/completions", json=body)
        assert response.status_code == 200
        first, second = fake.requests
        assert (first.deployment, first.json["service_tier"]) == ("fast-dz", "priority")
        assert second.deployment == "plain-dz" and "service_tier" not in second.json
        hold, charge = await paid(gw, account)
        assert (hold, charge) == (max_cost(PROMPT, CAP, INFO.priority_prices), cost_of(USAGE, INFO.prices))
