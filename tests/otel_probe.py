"""Run by tests/test_tracing_e2e.py, each time in a fresh process: which OpenTelemetry
modules a gateway loads.

    python tests/otel_probe.py [--block] [--traced] DATABASE_FILE

Starts a gateway as ``omixa serve`` does (``run_gateway``, SQLite at DATABASE_FILE, one
simulated deployment), sends a JSON and a streamed chat completion, stops it, and prints one
JSON line: the responses' statuses, the ``opentelemetry`` modules then loaded, and whether
``omixa.engine.tracing`` was. ``--block`` makes every ``opentelemetry`` import fail, as
without the ``otel`` extra; ``--traced`` sets ``[tracing] otlp_endpoint`` (nothing listens
there), and a gateway that stops at start reports its exit status and error instead (the
CLI's mapping: a ConfigError exits 2).
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any


class _NoOpenTelemetry(importlib.abc.MetaPathFinder):
    """Refuses ``opentelemetry`` and its submodules, as an environment without them does."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if "--block" in sys.argv:
    sys.meta_path.insert(0, _NoOpenTelemetry())

import httpx  # noqa: E402
import trio  # noqa: E402

from omixa.engine.config import ConfigError  # noqa: E402
from omixa.engine.config_loader import structure_config  # noqa: E402
from omixa.engine.money import parse_usd  # noqa: E402
from omixa.web.server import run_gateway  # noqa: E402

MODEL = "gpt-4o-mini"


async def serve_two_calls(database: Path, traced: bool) -> list[int]:
    raw: dict[str, Any] = {
        "storage": {"url": f"sqlite:///{database}"},
        "deployments": [{"name": "sim", "model": MODEL, "provider": "simulator", "sim_first_token_ms": 0}],
    }
    if traced:
        raw["tracing"] = {"otlp_endpoint": "http://127.0.0.1:9/v1/traces"}
    config = structure_config(raw, base_dir=database.parent)
    stopped = trio.Event()
    statuses = []
    async with trio.open_nursery() as nursery:
        gateway = await nursery.start(partial(run_gateway, config, port=0, shutdown_trigger=stopped.wait))
        account = await gateway.engine.accounts.create_account("probe@example.com")
        await gateway.engine.storage.top_up(account.id, parse_usd("1.00"))
        key = (await gateway.engine.accounts.create_key(account.id)).secret
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            for stream in (False, True):
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                response = await client.post(f"{gateway.base_url}/chat/completions", json=body)
                statuses.append(response.status_code)
        stopped.set()
    return statuses


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def main() -> int:
    database = Path(sys.argv[-1])
    try:
        statuses = trio.run(serve_two_calls, database, "--traced" in sys.argv)
    except BaseException as exc:  # the gateway's start failed: report it as the CLI would
        errors = [leaf for leaf in _leaves(exc) if isinstance(leaf, ConfigError)]
        if not errors:
            raise
        print(json.dumps({"exit": 2, "error": str(errors[0])}))
        return 2
    loaded = sorted(name for name in sys.modules if name == "opentelemetry" or name.startswith("opentelemetry."))
    print(
        json.dumps(
            {"statuses": statuses, "opentelemetry": loaded, "omixa_tracing": "omixa.engine.tracing" in sys.modules}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
