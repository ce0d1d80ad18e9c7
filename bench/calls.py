#!/usr/bin/env python3
"""Python function calls per request on the gateway's side, under cProfile: a figure that
does not move with the machine's speed, for telling whether a change to the request path
made it do more work when timings are too noisy to say.

    .venv/bin/python bench/calls.py [--requests 400] [--events 200] [--metrics off]

The gateway (``run_gateway``, as ``omixa serve`` runs it, SQLite) runs in this process in
front of bench/upstream.py (its own process), profiled on the event loop's thread; the
client runs in a worker thread (cProfile does not see it). Per scenario: 100 requests to
warm up, then ``--requests`` more; the figure is the calls made during those divided by
their count. Scenarios: a non-streaming chat completion, and a streamed one of ``--events``
content events (reported per request and per event, after taking off the non-streaming
figure).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import httpx
import trio

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness_procs import API_VERSION, MODEL_FAST, UPSTREAM_KEY  # noqa: E402

from omixa.engine.config_loader import structure_config  # noqa: E402
from omixa.engine.money import parse_usd  # noqa: E402
from omixa.web.server import run_gateway  # noqa: E402

WARM_UP = 100
MESSAGES = [{"role": "user", "content": "Say something short."}]


def start_upstream(events: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "upstream.py"), "--port", "0", "--workers", "1", "--events", str(events)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("UPSTREAM_PORT="):
            return proc, f"http://127.0.0.1:{line.split('=', 1)[1].strip()}"
    raise RuntimeError("the upstream did not start")


def total_calls(profile: cProfile.Profile) -> int:
    profile.disable()
    try:
        return pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    finally:
        profile.enable()


async def measure(endpoint: str, requests: int, tmp: Path, metrics: bool = True) -> dict[str, float]:
    config = structure_config(
        {
            "storage": {"url": f"sqlite:///{tmp / 'calls.db'}"},
            **({} if metrics else {"metrics": {"enabled": False}}),
            "limits": {"key_rpm": 0},
            "deployments": [
                {
                    "name": "fast",
                    "model": MODEL_FAST,
                    "provider": "azure",
                    "endpoint": endpoint,
                    "deployment": MODEL_FAST,
                    "api_key": UPSTREAM_KEY,
                    "api_version": API_VERSION,
                }
            ],
        },  # fmt: skip
        base_dir=tmp,
    )
    stopped = trio.Event()
    results: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        gateway = await nursery.start(partial(run_gateway, config, port=0, shutdown_trigger=stopped.wait))
        account = await gateway.engine.accounts.create_account("calls@example.com")
        await gateway.engine.storage.top_up(account.id, parse_usd("100000"))
        key = (await gateway.engine.accounts.create_key(account.id)).secret
        url = f"{gateway.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {key}"}

        def run(count: int, stream: bool) -> None:
            body = {"model": MODEL_FAST, "messages": MESSAGES, "stream": stream}
            with httpx.Client(timeout=30) as client:
                for _ in range(count):
                    response = client.post(url, json=body, headers=headers)
                    assert response.status_code == 200, response.text

        profile = cProfile.Profile()
        profile.enable()
        try:
            for name, stream in (("json", False), ("stream", True)):
                await trio.to_thread.run_sync(run, WARM_UP, stream)
                before = total_calls(profile)
                await trio.to_thread.run_sync(run, requests, stream)
                results[name] = (total_calls(profile) - before) / requests
        finally:
            profile.disable()
            stopped.set()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--metrics", choices=("on", "off"), default="on", help="[metrics] enabled (default on)")
    args = parser.parse_args()
    upstream, endpoint = start_upstream(args.events)
    try:
        with tempfile.TemporaryDirectory(prefix="omixa-calls-") as tmp:
            results = trio.run(measure, endpoint, args.requests, Path(tmp), args.metrics == "on")
    finally:
        upstream.terminate()
        upstream.wait()
    per_event = (results["stream"] - results["json"]) / args.events
    print(f"calls per non-streaming request: {results['json']:,.0f}")
    print(f"calls per streamed request ({args.events} events): {results['stream']:,.0f}")
    print(f"calls per streamed event (beyond a non-streaming request): {per_event:,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
