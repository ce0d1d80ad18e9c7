"""``omixa add-vertex-deployment`` as an operator runs it, then a gateway serving that file."""

from __future__ import annotations

import httpx
import trio
from fake_vertex import DEFAULT_REPLY, open_fake_vertex
from harness import open_gateway
from test_cli import run, write_config


async def test_add_vertex_deployment_then_serve_it(database_url, tmp_path, monkeypatch):
    async with open_fake_vertex() as fake:
        fake.write_service_account(tmp_path)  # tmp_path/service-account.json
        config = write_config(tmp_path / "omixa.toml", database_url, "# keep this comment\n")
        added = await trio.to_thread.run_sync(lambda: run(
            "add-vertex-deployment", "gemini-2.5-pro", "vertex-sa", "us-central1",
            "--service-account-file", "service-account.json", "--endpoint", fake.endpoint + "/",
            "--vertex-model", "gemini-2.5-pro-002", "--rpm", "60", "--tpm", "100000", config=config,
        ))  # fmt: skip
        assert added.returncode == 0, added.stderr
        express = run("add-vertex-deployment", "gemini-2.5-flash", "vertex-key", "global",
                      "--api-key", "env:VERTEX_KEY", "--weight", "2", "--endpoint", fake.endpoint,
                      config=config)  # fmt: skip
        assert express.returncode == 0, express.stderr
        text = config.read_text()
        assert "# keep this comment" in text and 'provider = "vertex"' in text
        assert 'service_account_file = "service-account.json"' in text and 'api_key = "env:VERTEX_KEY"' in text
        assert 'deployment = "gemini-2.5-pro-002"' in text and f'endpoint = "{fake.endpoint}"' in text

        both = run("add-vertex-deployment", "gemini-2.5-pro", "x", "global", "--api-key", "k",
                   "--service-account-file", "f.json", config=config)  # fmt: skip
        assert both.returncode == 2 and "exactly one" in both.stderr
        wrong = run("add-vertex-deployment", "gpt-4o", "y", "global", "--api-key", "k", config=config)
        assert wrong.returncode == 2 and "is a azure model, not vertex" in wrong.stderr
        place = run("add-vertex-deployment", "gemini-2.5-pro", "z", "Nowhere 1", "--api-key", "k", config=config)
        assert place.returncode == 2 and "location" in place.stderr
        assert "vertex-key" in config.read_text() and '"x"' not in config.read_text()

        monkeypatch.setenv("VERTEX_KEY", fake.api_key)
        async with open_gateway(database_url, config_path=config) as gw:
            _, key = await gw.funded_account("1.00")
            async with httpx.AsyncClient() as client:
                for model in ("gemini-2.5-pro", "gemini-2.5-flash"):
                    response = await client.post(
                        f"{gw.base_url}/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
                    )
                    assert response.status_code == 200, response.text
                    assert response.json()["choices"][0]["message"]["content"] == DEFAULT_REPLY
        paths = [r.path for r in fake.requests]
        assert paths == [
            "/v1/projects/fake-project/locations/us-central1/publishers/google/models/gemini-2.5-pro-002:generateContent",
            "/v1/publishers/google/models/gemini-2.5-flash:generateContent",  # express mode
        ]
        assert fake.token_requests == 1
