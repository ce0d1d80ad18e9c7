"""Per-family normalisation, seen where it matters: in the body that reaches the fake Azure.

The expected tables are written out by hand from the product's promise (docs/api.md), not
derived from the catalog, so a wrong catalog entry fails here.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fake_azure import open_fake_azure
from harness import azure_deployment, open_gateway

from omixa.engine.catalog import EFFORTS, load_catalog
from omixa.engine.config import BreakerConfig, UpstreamConfig
from omixa.engine.config_loader import structure_config
from omixa.engine.fleet import Fleet
from omixa.engine.router import Router

CATALOG = load_catalog()
MESSAGES = [{"role": "user", "content": "Think about foxes."}]
GPT5 = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
GPT51 = {"none": "none", "minimal": "none", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
GPT54 = {"none": "none", "minimal": "none", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}
PRO = dict.fromkeys(EFFORTS, "high")
REMOVED = dict.fromkeys(EFFORTS, None)
# model -> requested effort -> what Azure receives (None: no reasoning_effort at all)
FAMILIES = {
    "gpt-5": GPT5, "gpt-5-mini": GPT5, "gpt-5-nano": GPT5,
    "gpt-5.1": GPT51,
    "gpt-5.4": GPT54, "gpt-5.5": GPT54,
    "gpt-5-pro": PRO,
    "gpt-4o": REMOVED, "gpt-4o-mini": REMOVED, "gpt-4.1": REMOVED, "gpt-4.1-mini": REMOVED,
    "gpt-4.1-nano": REMOVED,
}  # fmt: skip
GPT5_FAMILY = {"gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5.1", "gpt-5.4", "gpt-5.5", "gpt-5-pro"}
DROPPED = {"temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": 0.1,
           "logprobs": True, "top_logprobs": 2, "logit_bias": {"1234": -5}}  # fmt: skip


def test_every_azure_chat_model_of_the_catalog_is_in_the_table():
    catalog = load_catalog()
    azure_chat = {m.id for m in catalog.models.values() if m.provider == "azure" and m.modality == "chat"}
    assert azure_chat == set(FAMILIES)


async def test_reasoning_effort_verbosity_and_sampling_per_family(tmp_path):
    """Every family x every effort value, as Azure receives it (non-streaming and stream)."""
    async with open_fake_azure() as fake:
        deployments = [azure_deployment(fake, name=f"dep-{m}", model=m) for m in FAMILIES]
        async with open_gateway(f"sqlite:///{tmp_path / 'f.db'}", fake, deployments=deployments) as gw:
            _, key = await gw.funded_account("1000.00")
            async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
                for model, table in FAMILIES.items():
                    for requested, expected in table.items():
                        body = {"model": model, "messages": MESSAGES, "reasoning_effort": requested,
                                "verbosity": "low", "service_tier": "priority", **DROPPED}  # fmt: skip
                        for stream in (False, True):
                            response = await client.post(
                                f"{gw.base_url}/chat/completions", json={**body, "stream": stream}
                            )
                            assert response.status_code == 200, response.text
                            sent = fake.requests[-1]
                            assert sent.deployment == f"{model}-dz"
                            where = f"{model} {requested} stream={stream}"
                            assert sent.json.get("reasoning_effort") == expected, where
                            assert ("reasoning_effort" in sent.json) == (expected is not None), where
                            assert sent.json.get("verbosity") == ("low" if model in GPT5_FAMILY else None), where
                            # No deployment here has priority processing: the tier is omitted.
                            assert "service_tier" not in sent.json, where
                            reasoning = CATALOG.get(model).reasoning
                            for name, value in DROPPED.items():
                                assert sent.json.get(name) == (None if reasoning else value), (where, name)
                            assert ("max_completion_tokens" in sent.json) == reasoning, where
                            assert ("max_tokens" in sent.json) != reasoning, where


async def test_bad_effort_verbosity_or_tier_is_refused_before_anything_happens(tmp_path):
    async with (
        open_fake_azure() as fake,
        open_gateway(f"sqlite:///{tmp_path / 'f.db'}", fake, deployments=[azure_deployment(fake, model="gpt-5")]) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            for extra, field in (
                ({"reasoning_effort": "maximal"}, "reasoning_effort"),
                ({"reasoning_effort": 3}, "reasoning_effort"),
                ({"verbosity": "verbose"}, "verbosity"),
                ({"service_tier": "turbo"}, "service_tier"),  # flex and scale are taken (as default)
            ):
                response = await client.post(
                    f"{gw.base_url}/chat/completions", json={"model": "gpt-5", "messages": MESSAGES, **extra}
                )
                assert response.status_code == 400
                error = response.json()["error"]
                assert error["code"] == "invalid_request" and field in error["message"]
                assert error["request_id"] == response.headers["x-request-id"]
        assert fake.requests == []
        assert [e.type for e in await gw.storage.ledger_entries(account)] == ["top_up"]


def test_priority_needs_priority_prices():
    catalog = load_catalog()
    fleet = Fleet(catalog=catalog, upstream=UpstreamConfig(), breaker=BreakerConfig(), router=Router())
    raw = {"name": "p", "model": "gpt-5", "endpoint": "https://x", "deployment": "d", "api_key": "k", "priority": True}
    config = structure_config({"deployments": [raw]}, base_dir=Path("."))
    with pytest.raises(ValueError, match="priority_prices"):
        fleet.check(config.deployments)
    fine = structure_config({"deployments": [{**raw, "model": "gpt-5.1"}]}, base_dir=Path("."))
    fleet.check(fine.deployments)
