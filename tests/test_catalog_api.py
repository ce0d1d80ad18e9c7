"""GET /api/v1/models and /api/v1/models/{id}: enabled models only, with modality, provider,
efforts and exact prices; and the catalog's own checks."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fake_azure import open_fake_azure
from harness import azure_deployment, open_gateway

from omixa.engine.catalog import CatalogError, load_catalog


async def test_the_catalog_lists_enabled_models_with_their_prices(tmp_path):
    async with open_fake_azure() as fake:
        deployments = [
            azure_deployment(fake, name="a", model="gpt-image-1"),
            azure_deployment(fake, name="b", model="gpt-5.1"),
            azure_deployment(fake, name="c", model="text-embedding-3-small"),
            azure_deployment(fake, name="d", model="gpt-4o-mini"),
            azure_deployment(fake, name="off", model="gpt-4o", enabled=False),
        ]
        async with open_gateway(f"sqlite:///{tmp_path / 'c.db'}", fake, deployments=deployments) as gw:
            _, key = await gw.funded_account("0")
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
                listing = (await client.get(f"{gw.base_url}/models")).json()
                one = await client.get(f"{gw.base_url}/models/gpt-5.1")
                disabled = await client.get(f"{gw.base_url}/models/gpt-4o")
                unknown = await client.get(f"{gw.base_url}/models/gpt-9")
            async with httpx.AsyncClient() as client:
                anonymous = await client.get(f"{gw.base_url}/models/gpt-5.1")

    assert listing["object"] == "list"
    # Catalog order, enabled deployments only.
    assert [m["id"] for m in listing["data"]] == ["gpt-4o-mini", "gpt-5.1", "text-embedding-3-small", "gpt-image-1"]
    by_id = {m["id"]: m for m in listing["data"]}
    assert one.status_code == 200 and one.json() == by_id["gpt-5.1"]
    assert by_id["gpt-5.1"] == {
        "id": "gpt-5.1", "object": "model", "created": 1762992000, "owned_by": "azure", "provider": "azure",
        "modality": "chat", "context_window": 400000, "max_output_tokens": 128000,
        "reasoning": True, "reasoning_efforts": ["none", "low", "medium", "high"], "verbosity": True,
        "pricing": {"unit": "USD per 1M tokens", "input": "1.25", "cached_input": "0.125", "output": "10.00",
                    "priority": {"input": "2.50", "cached_input": "0.25", "output": "20.00"}},
    }  # fmt: skip
    assert all(m["created"] > 0 for m in listing["data"])  # every shipped model has its date
    mini = by_id["gpt-4o-mini"]
    assert (mini["reasoning_efforts"], mini["verbosity"], "priority" in mini["pricing"]) == ([], False, False)
    embedding = by_id["text-embedding-3-small"]
    assert (embedding["modality"], embedding["dimensions"], embedding["custom_dimensions"]) == ("embedding", 1536, True)
    assert embedding["pricing"]["input"] == "0.02"
    image = by_id["gpt-image-1"]["pricing"]
    assert (image["input"], image["image_input"], image["image_output"]) == ("5.00", "10.00", "40.00")
    assert image["per_image"]["unit"] == "USD per image"
    assert image["per_image"]["low"] == {"1024x1024": "0.011", "1024x1536": "0.016", "1536x1024": "0.016"}
    assert image["per_image"]["high"]["1536x1024"] == "0.25"

    for missing in (disabled, unknown):
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "model_not_found" and error["request_id"] == missing.headers["x-request-id"]
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    "entry, words",
    [
        ('reasoning = false\nreasoning_efforts = ["low"]', "only a reasoning model"),
        ('reasoning = true\nreasoning_efforts = ["high", "low"]', "in that order"),
        ('reasoning = true\nreasoning_efforts = ["max"]', "a subset of"),
        ('reasoning = false\npriority_prices = { output = "1" }', "priority_prices: needs at least input"),
    ],
)
def test_bad_family_data_is_refused_with_its_path(tmp_path: Path, entry, words):
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        '[models."m"]\nprovider = "azure"\nmodality = "chat"\nencoding = "o200k_base"\n'
        f'context_window = 1000\nmax_output_tokens = 100\n{entry}\nprices = {{ input = "1" }}\n'
    )
    with pytest.raises(CatalogError, match="models.m") as caught:
        load_catalog(catalog)
    assert words in str(caught.value)


def test_image_and_embedding_models_need_their_tables(tmp_path: Path):
    catalog = tmp_path / "models.toml"
    head = '[models."m"]\nprovider = "azure"\nencoding = "o200k_base"\ncontext_window = 1000\nmax_output_tokens = 0\nreasoning = false\nprices = { input = "1" }\n'
    catalog.write_text(head + 'modality = "embedding"\n')
    with pytest.raises(CatalogError, match="dimensions"):
        load_catalog(catalog)
    catalog.write_text(
        head
        + 'modality = "image"\nimage_output_tokens.low = { "1024x1024" = 272 }\nimage_prices.high = { "1024x1024" = "0.1" }\n'
    )
    with pytest.raises(CatalogError, match="same qualities and sizes"):
        load_catalog(catalog)


def test_a_new_family_is_data_only_and_ties_go_to_the_lower_effort(tmp_path: Path):
    catalog = tmp_path / "models.toml"
    catalog.write_text(
        '[models."gpt-next"]\nprovider = "azure"\nmodality = "chat"\nencoding = "o200k_base"\n'
        "context_window = 1000\nmax_output_tokens = 100\nreasoning = true\n"
        'reasoning_efforts = ["minimal", "medium", "xhigh"]\nprices = { input = "1" }\n'
    )
    model = load_catalog(catalog).get("gpt-next")
    assert model is not None
    mapped = {e: model.effort_for(e) for e in ("none", "minimal", "low", "medium", "high", "xhigh")}
    assert mapped == {"none": "minimal", "minimal": "minimal", "low": "minimal",
                      "medium": "medium", "high": "medium", "xhigh": "xhigh"}  # fmt: skip
