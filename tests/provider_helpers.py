"""What the provider tests share: request bodies, the upstream settings, an Azure
deployment pointing to a fake Azure, and reading a stream's events."""

from __future__ import annotations

from omixa.engine.config import DeploymentConfig, UpstreamConfig

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say something."}]}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
SERVER = UpstreamConfig(request_timeout_seconds=5.0, timeout_seconds=5.0, idle_timeout_seconds=5.0,
                        connect_timeout_seconds=2.0, max_connections=8)  # fmt: skip


def azure_deployment(fake, **changes) -> DeploymentConfig:
    fields = dict(name="east", model="gpt-4o", provider="azure", endpoint=fake.endpoint + "/",
                  deployment="gpt4o-east", api_key=fake.api_key)  # fmt: skip
    return DeploymentConfig(**{**fields, **changes})


async def collect(provider, body=STREAM_BODY):
    async with provider.open_stream(body) as events:
        return [event async for event in events]


def content_of(events) -> str:
    return "".join(
        e.data["choices"][0]["delta"].get("content") or "" for e in events if e.data and e.data.get("choices")
    )
