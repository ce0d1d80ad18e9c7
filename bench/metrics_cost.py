#!/usr/bin/env python3
"""CPU time the metrics' hooks take for one request, in isolation: the calls a
non-streaming chat request makes into ``engine.metrics.Metrics`` (the hold's wait, the
upstream attempt, its end, the finished call with its tokens and cost, the HTTP answer and
four timed storage calls), made on the real class, repeated, timed per request.

    .venv/bin/python bench/metrics_cost.py [--requests 50000]

A floor for what metrics add to a request's CPU (compare with ``cpu_ms_per_request`` from
``bench/run scale``): it leaves out what the c64 bench sees and this cannot (cache effects,
the sampler's reads, scrapes). One process, one thread, no I/O.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from omixa.engine.metrics import Metrics
from omixa.storage import RequestLog

MODEL = "gpt-4o-mini"
STORAGE_CALLS = ("find_api_key", "apply_wallet_ops", "apply_wallet_ops", "insert_request_logs")


def one_request(metrics: Metrics, log: RequestLog) -> None:
    call = metrics.call("chat", MODEL, False)
    call.hold_wait.observe(0.0008)
    metrics.upstream_answered(MODEL, "east", 0.012)
    metrics.attempt_ended(MODEL, "east", "ok", None)
    metrics.finished("chat", log, 1, 0.0011)
    metrics.http_answered("/api/v1/chat/completions", "POST", 200, "")
    for name in STORAGE_CALLS:
        metrics.storage_call(name, 0.0009)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    metrics = Metrics()
    log = RequestLog(
        id="req_bench", account_id="acct_bench", key_id="key_bench", model=MODEL, provider="azure",
        deployment="east", region=None, status="ok", stream=False, prompt_tokens=12, completion_tokens=40,
        cached_tokens=0, reasoning_tokens=0, cost=25_800, latency_ms=14, ttft_ms=None,
        upstream_request_id=None, created_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    for _ in range(2_000):  # children made, caches warm
        one_request(metrics, log)
    started = time.process_time()
    for _ in range(args.requests):
        one_request(metrics, log)
    spent = time.process_time() - started
    print(f"metrics hooks: {spent / args.requests * 1e6:.1f} µs of CPU per request ({args.requests:,} requests)")


if __name__ == "__main__":
    main()
