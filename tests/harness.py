"""A real gateway for end-to-end tests: Hypercorn on 127.0.0.1:0 in front of a fake Azure.

    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        ...

Everything is real: the gateway runs :func:`web.server.run_gateway` exactly as ``omixa
serve`` does (its own trio-asyncio loop, storage, actors, Hypercorn), and is shut down
through its shutdown trigger at the end.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from omixa.engine.config_loader import load_config, structure_config
from omixa.engine.money import parse_usd
from omixa.web.server import Gateway, run_gateway

MODEL = "gpt-4o-mini"


@attrs.define
class RunningGateway:
    gateway: Gateway
    fake: Any = None  # the fake Azure in front of which it runs, if any
    stopped: trio.Event = attrs.field(factory=trio.Event)

    def stop(self) -> None:
        """Begin a graceful shutdown, as SIGTERM does."""
        self.stopped.set()

    @property
    def base_url(self) -> str:
        return self.gateway.base_url

    @property
    def root_url(self) -> str:
        return self.gateway.root_url

    @property
    def engine(self):
        return self.gateway.engine

    @property
    def storage(self):
        return self.gateway.engine.storage

    async def funded_account(self, usd: str = "10.00") -> tuple[str, str]:
        """A new account with ``usd`` and a key: (account id, API key)."""
        accounts = self.engine.accounts
        account = await accounts.create_account("dev@example.com")
        if parse_usd(usd) > 0:
            await self.storage.top_up(account.id, parse_usd(usd))
        key = await accounts.create_key(account.id)
        return account.id, key.secret

    async def request_log(self, request_id: str):
        """The request's log row, once the aggregator has written it."""
        with trio.fail_after(10):
            while (row := await self.storage.get_request_log(request_id)) is None:
                await trio.sleep(0.01)
        return row

    async def settled_entries(self, account_id: str):
        """The account's ledger rows, once no hold of it is pending any more."""
        with trio.fail_after(10):
            while (await self.storage.get_wallet(account_id)).locked:
                await trio.sleep(0.01)
        return await self.storage.ledger_entries(account_id)

    async def refused(self, key: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        """POST ``body`` to ``/api/v1{path}``, expecting an error envelope whose request id is
        the response's; returns (status, the envelope's ``error``)."""
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            response = await client.post(f"{self.base_url}{path}", json=body)
        error = response.json()["error"]
        assert error["request_id"] == response.headers["x-request-id"]
        return response.status_code, error

    async def flushed(self) -> None:
        """Wait until every finished request's log is written."""
        with trio.fail_after(10):
            await self.engine.usage.wait_flushed()


def azure_deployment(fake: Any, *, name: str = "eastus-1", model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": model,
        "provider": "azure",
        "endpoint": fake.endpoint,
        "deployment": f"{model}-dz",
        "api_key": fake.api_key,
        "region": "eastus",
        **extra,
    }


def gateway_config(database_url: str, deployments: list[dict[str, Any]], **sections: Any):
    raw: dict[str, Any] = {"storage": {"url": database_url}, "deployments": deployments}
    raw["server"] = {"shutdown_grace_seconds": 2.0, **sections.pop("server", {})}
    raw["upstream"] = {"request_timeout_seconds": 20.0, **sections.pop("upstream", {})}
    raw["usage"] = {"flush_interval_seconds": 0.02, **sections.pop("usage", {})}
    raw.update(sections)
    return structure_config(raw, base_dir=Path("."))


@asynccontextmanager
async def open_gateway(
    database_url: str,
    fake: Any = None,
    *,
    deployments: list[dict[str, Any]] | None = None,
    config_path: Path | None = None,
    span_processor: Any = None,
    **sections: Any,
) -> AsyncIterator[RunningGateway]:
    """A gateway in front of ``fake`` (or ``deployments``), configured by ``sections``
    (``upstream={...}``...) or read from ``config_path``; ``span_processor`` (an
    OpenTelemetry span processor) gets the requests' spans."""
    if config_path is not None:
        config = load_config(config_path)
    else:
        if deployments is None:
            deployments = [azure_deployment(fake)]
        config = gateway_config(database_url, deployments, **sections)
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:
        gateway = await nursery.start(
            partial(
                run_gateway,
                config,
                port=0,
                shutdown_trigger=stopped.wait,
                config_path=config_path,
                span_processor=span_processor,
            )
        )
        try:
            yield RunningGateway(gateway, fake, stopped)
        finally:
            stopped.set()


async def ledger_verify_cli(database_url: str, tmp_path: Path) -> None:
    """``omixa ledger verify`` as the operator runs it, in its own process on the same
    database; fails the test unless it exits 0."""
    config = tmp_path / "verify.toml"
    config.write_text(f'[storage]\nurl = "{database_url}"\n')
    verify = await trio.run_process(
        [str(Path(sys.executable).parent / "omixa"), "ledger", "verify", "--config", str(config)],
        capture_stderr=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
