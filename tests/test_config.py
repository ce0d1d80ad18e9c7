"""Configuration: the shipped files load, and bad values are refused with their key's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from omixa.engine.catalog import load_catalog
from omixa.engine.config import ConfigError, LoggingConfig
from omixa.engine.config_loader import load_config, structure_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_config_and_the_catalog_load():
    config = load_config(ROOT / "config" / "omixa.example.toml", resolve_secrets=False)
    catalog = load_catalog()
    assert config.deployments and all(catalog.get(d.model) for d in config.deployments)
    required = {
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-5.1",
        "gpt-5-pro",
        "gpt-5.4",
        "gpt-5.5",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "gpt-image-1",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
    }
    assert required <= set(catalog.models)
    mini = catalog.get("gpt-4o-mini").prices
    assert (mini.input, mini.output) == (150_000_000, 600_000_000)  # nano-dollars per 1M
    assert catalog.get("text-embedding-3-small").prices.input == 20_000_000
    image = catalog.get("gpt-image-1").prices
    assert (image.input, image.image_input, image.image_output) == (5_000_000_000, 10_000_000_000, 40_000_000_000)


def test_stream_knobs_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AZURE_STREAM_HEARTBEAT_SECONDS", "2.5")
    monkeypatch.setenv("AZURE_STREAM_FLUSH_PADDING_BYTES", "0")
    streaming = structure_config({"streaming": {"heartbeat_seconds": 9}}, base_dir=Path(".")).streaming
    assert (streaming.heartbeat_seconds, streaming.flush_padding_bytes, streaming.chunk_bytes) == (2.5, 0, 128)
    monkeypatch.setenv("AZURE_STREAM_CHUNK_BYTES", "lots")
    with pytest.raises(ConfigError, match="AZURE_STREAM_CHUNK_BYTES"):
        structure_config({}, base_dir=Path("."))


def test_secrets_resolve_from_the_environment(monkeypatch):
    raw = {
        "deployments": [
            {"name": "a", "model": "gpt-4o", "endpoint": "https://x", "deployment": "d", "api_key": "env:AZ_TEST_KEY"}
        ]
    }
    with pytest.raises(ConfigError, match=r"deployments\[0\].api_key"):
        structure_config(raw, base_dir=Path("."))
    monkeypatch.setenv("AZ_TEST_KEY", "secret")
    assert structure_config(raw, base_dir=Path(".")).deployments[0].api_key == "secret"


def test_logging_is_text_or_json_at_a_level_and_anything_else_is_refused(monkeypatch):
    def logging_of(raw: dict) -> LoggingConfig:
        return structure_config(raw, base_dir=Path(".")).logging

    assert logging_of({}) == LoggingConfig(format="text", level="INFO")
    assert logging_of({"logging": {"format": "json", "level": "debug"}}) == LoggingConfig(format="json", level="DEBUG")
    for raw, message in [
        ({"format": "xml"}, "logging.format: must be one of 'text', 'json', got 'xml'"),
        ({"format": "JSON"}, "logging.format: must be one of 'text', 'json', got 'JSON'"),
        ({"format": 1}, "logging.format: expected a string, got 1"),
        (
            {"level": "loud"},
            "logging.level: must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL', got 'LOUD'",
        ),
        ({"colour": True}, "logging.colour: unknown key"),
    ]:
        with pytest.raises(ConfigError) as refused:
            logging_of({"logging": raw})
        assert str(refused.value) == message
    monkeypatch.setenv("OMIXA_LOG_FORMAT", " json ")
    monkeypatch.setenv("OMIXA_LOG_LEVEL", "warning")
    assert logging_of({"logging": {"format": "text"}}) == LoggingConfig(format="json", level="WARNING")
    monkeypatch.setenv("OMIXA_LOG_FORMAT", "yaml")
    with pytest.raises(ConfigError, match="^OMIXA_LOG_FORMAT: must be one of 'text', 'json', got 'yaml'$"):
        logging_of({})


def test_instance_staleness_must_span_several_heartbeats():
    with pytest.raises(ConfigError, match="instance_stale_seconds.*3 x instance_heartbeat_seconds"):
        structure_config(
            {"wallet": {"instance_heartbeat_seconds": 10, "instance_stale_seconds": 20}}, base_dir=Path(".")
        )
    wallet = structure_config(
        {"wallet": {"instance_heartbeat_seconds": 10, "instance_stale_seconds": 30}}, base_dir=Path(".")
    ).wallet
    assert wallet.instance_stale_seconds == 30


def test_only_the_deployed_models_encodings_are_loaded_at_start():
    from omixa.engine.catalog import load_catalog
    from omixa.engine.runtime import deployed_encodings

    catalog = load_catalog()
    config = structure_config(
        {
            "deployments": [
                {"name": "a", "model": "gpt-4o-mini", "provider": "simulator"},
                {"name": "b", "model": "gpt-5.1", "provider": "simulator"},
            ]
        },
        base_dir=Path("."),
    )
    assert deployed_encodings(catalog, config.deployments) == {"o200k_base"}
    with_embeddings = (
        config.deployments
        + structure_config(
            {
                "deployments": [
                    {"name": "c", "model": "text-embedding-3-small", "provider": "simulator"},
                ]
            },
            base_dir=Path("."),
        ).deployments
    )
    assert deployed_encodings(catalog, with_embeddings) == {"o200k_base", "cl100k_base"}


def test_cluster_settings_and_the_redis_url_from_the_environment(monkeypatch):
    monkeypatch.delenv("OMIXA_REDIS_URL", raising=False)
    config = structure_config(
        {"cluster": {"redis_url": "redis://cache:6379/1", "timeout_seconds": 0.5}, "server": {"workers": 4}},
        base_dir=Path("."),
    )
    assert config.cluster.redis_url == "redis://cache:6379/1" and config.cluster.timeout_seconds == 0.5
    assert config.server.workers == 4 and config.cluster.key_prefix == "omixa"
    monkeypatch.setenv("OMIXA_REDIS_URL", " redis://other:6380/0 ")
    assert structure_config({}, base_dir=Path(".")).cluster.redis_url == "redis://other:6380/0"
    for bad, where in (
        ({"server": {"workers": 0}}, "server.workers"),
        ({"cluster": {"retry_seconds": 0}}, "cluster.retry_seconds"),
    ):
        with pytest.raises(ConfigError, match=where):
            structure_config(bad, base_dir=Path("."))
