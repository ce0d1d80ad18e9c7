#!/usr/bin/env python3
"""The load generator: a minimal HTTP/1.1 client on raw asyncio sockets (keep-alive).

Run as its own process; prints one JSON object with the results on stdout.

Modes (``load.py MODE --url ... [options]``):

- ``rps``      non-streaming: C keep-alive connections, each sending the next request as soon
               as the previous answer is complete, for ``--duration`` seconds after a
               ``--warmup``. Requests/s, latency p50/p90/p99, non-2xx and failed requests.
- ``latency``  non-streaming, one connection, ``--count`` requests one after another (after
               ``--warmup-count``): latency p50/p90/p99.
- ``sse``      streaming throughput: C connections, each opening the next stream as soon as
               the previous one ended, for ``--duration`` seconds. SSE ``data:`` events/s
               (comments such as Omixa's padding and heartbeats are not counted, nor is
               ``data: [DONE]``) counted inside the window; streams in flight at the end are
               read to their end but their later events are not counted.
- ``ttfb``     streaming, one connection, ``--count`` short streams one after another: time to
               the first response byte and to the first ``data:`` event, p50/p90/p99.
- ``hold``     opens ``--streams`` concurrent streams (``--open-concurrency`` at a time), waits
               until every one has received its first ``data:`` event, reads ``VmRSS`` of
               ``--pid``, holds them ``--hold`` seconds, reads again, then closes them all.

``--pid PID`` (any mode): CPU time (utime+stime from /proc/PID/stat) and VmRSS/VmHWM of that
process are read at the start and the end of the measured window; ``--also-pids`` adds the
CPU time of more processes (a supervisor's workers).

The target is ``--url http://HOST:PORT/path``; ``--auth-header`` is sent as is (e.g.
``"Authorization: Bearer omx_..."`` or ``"api-key: x"``). Every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from load_client import Conn, Result, Stats, Target, connect, worker_loop
from load_stats import ProcWatch, lat_summary, mem_kib, now, pct

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a haiku about the sea, please."},
]


# ---------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------
async def run_rps(args: argparse.Namespace, target: Target, watch: ProcWatch) -> dict:
    """Requests completed inside the window [w0, w1] (after the warm-up)."""
    stats = Stats()
    t0 = now()
    w0 = t0 + args.warmup
    w1 = w0 + args.duration
    hard = w1 + args.timeout + 5

    async def starter() -> None:
        await asyncio.sleep(max(0, w0 - now()))
        watch.start()
        await asyncio.sleep(max(0, w1 - now()))
        watch.stop()

    tasks = [worker_loop(target, stats, t_end=w1, hard_end=hard, timeout=args.timeout) for _ in range(args.concurrency)]
    await asyncio.gather(starter(), *tasks)
    done = [r for r in stats.results if not r.failed and w0 <= r.t_done <= w1]
    ok = [r for r in done if 200 <= r.status < 300]
    non2xx = [r for r in done if not 200 <= r.status < 300]
    statuses: dict[str, int] = {}
    for r in non2xx:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    out: dict[str, Any] = {
        "mode": "rps",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "requests": len(done),
        "requests_total": len(stats.results),  # the warm-up and the tail included
        "ok": len(ok),
        "rps": round(len(ok) / args.duration, 1),
        "non_2xx": len(non2xx),
        "non_2xx_by_status": statuses,
        "failed": sum(stats.failures.values()),
        "failures": stats.failures,
        "connections_opened": stats.connections,
        "latency": lat_summary([r.t_done - r.t_sent for r in ok]),
    }
    out["proc"] = watch.report()
    if watch.pid and ok:
        out["cpu_ms_per_request"] = round(out["proc"]["cpu_seconds"] * 1000 / len(ok), 4)
    return out


async def run_latency(args: argparse.Namespace, target: Target, watch: ProcWatch) -> dict:
    stats = Stats()
    hard = now() + args.time_limit
    await worker_loop(target, stats, t_end=hard, hard_end=hard, timeout=args.timeout, count=args.warmup_count)
    stats.results.clear()
    watch.start()
    await worker_loop(target, stats, t_end=hard, hard_end=hard, timeout=args.timeout, count=args.count)
    watch.stop()
    ok = [r for r in stats.results if not r.failed and 200 <= r.status < 300]
    out: dict[str, Any] = {
        "mode": "latency",
        "requests": len(stats.results),
        "ok": len(ok),
        "non_2xx": sum(1 for r in stats.results if not r.failed and not 200 <= r.status < 300),
        "failed": sum(stats.failures.values()),
        "failures": stats.failures,
        "connections_opened": stats.connections,
        "latency": lat_summary([r.t_done - r.t_sent for r in ok]),
        "proc": watch.report(),
    }
    if watch.pid and ok:
        out["cpu_ms_per_request"] = round(out["proc"]["cpu_seconds"] * 1000 / len(ok), 4)
    return out


def stream_checks(results: list[Result]) -> dict:
    return {
        "streams": len(results),
        "streams_ok": sum(
            1 for r in results if not r.failed and r.status == 200 and r.done_marker and not r.error_events
        ),
        "non_200": sum(1 for r in results if not r.failed and r.status != 200),
        "without_done": sum(1 for r in results if not r.failed and r.status == 200 and not r.done_marker),
        "error_events": sum(r.error_events for r in results),
    }


async def run_sse(args: argparse.Namespace, target: Target, watch: ProcWatch) -> dict:
    """Events received inside the window [w0, w1], whichever stream they belong to; streams
    still running at w1 are read to their end (their later events are not counted)."""
    stats = Stats()
    t0 = now()
    w0 = t0 + args.warmup
    w1 = w0 + args.duration
    hard = w1 + args.timeout + 5

    async def starter() -> None:
        await asyncio.sleep(max(0, w0 - now()))
        watch.start()
        await asyncio.sleep(max(0, w1 - now()))
        watch.stop()

    tasks = [
        worker_loop(target, stats, t_end=w1, hard_end=hard, timeout=args.timeout, window=(w0, w1))
        for _ in range(args.concurrency)
    ]
    await asyncio.gather(starter(), *tasks)
    events = sum(r.events_in_window for r in stats.results)
    out: dict[str, Any] = {
        "mode": "sse",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "events_in_window": events,
        "events_per_s": round(events / args.duration, 1),
        **stream_checks(stats.results),
        "events_per_stream_p50": pct([r.events for r in stats.results if not r.failed], 50),
        "failed": sum(stats.failures.values()),
        "failures": stats.failures,
        "connections_opened": stats.connections,
        "proc": watch.report(),
    }
    if watch.pid and events:
        out["cpu_us_per_event"] = round(out["proc"]["cpu_seconds"] * 1e6 / events, 3)
    return out


async def run_ttfb(args: argparse.Namespace, target: Target, watch: ProcWatch) -> dict:
    stats = Stats()
    hard = now() + args.time_limit
    await worker_loop(target, stats, t_end=hard, hard_end=hard, timeout=args.timeout, count=args.warmup_count)
    stats.results.clear()
    watch.start()
    await worker_loop(target, stats, t_end=hard, hard_end=hard, timeout=args.timeout, count=args.count)
    watch.stop()
    ok = [r for r in stats.results if not r.failed and r.status == 200 and r.t_first_data]
    return {
        "mode": "ttfb",
        **stream_checks(stats.results),
        "failed": sum(stats.failures.values()),
        "failures": stats.failures,
        "connections_opened": stats.connections,
        "ttfb": lat_summary([r.t_first_byte - r.t_sent for r in ok]),
        "ttfd": lat_summary([r.t_first_data - r.t_sent for r in ok]),
        "stream_time": lat_summary([r.t_done - r.t_sent for r in ok]),
        "proc": watch.report(),
    }


async def run_hold(args: argparse.Namespace, target: Target, watch: ProcWatch) -> dict:
    """Open many streams, wait for every first event, read RSS, close them all."""
    loop = asyncio.get_running_loop()
    t0 = now()
    deadline = t0 + args.time_limit
    gate = asyncio.Semaphore(args.open_concurrency)
    conns: list[Conn] = []
    failures: dict[str, int] = {}
    first: list[float] = []

    async def open_one() -> None:
        async with gate:
            try:
                conn = await asyncio.wait_for(connect(target), max(0.1, deadline - now()))
            except (TimeoutError, OSError) as exc:
                failures[f"connect: {type(exc).__name__}"] = failures.get(f"connect: {type(exc).__name__}", 0) + 1
                return
            conns.append(conn)
            conn.first_data_waiter = loop.create_future()
            fut = conn.send(target.request)
            try:
                await asyncio.wait_for(asyncio.shield(conn.first_data_waiter), max(0.1, deadline - now()))
            except TimeoutError:
                failures["no first event in time"] = failures.get("no first event in time", 0) + 1
                return
            r = conn.result
            if r is None:  # ended or failed before its first event
                res = fut.result() if fut.done() else None
                reason = (res.failed or f"ended early (status {res.status})") if res else "ended early"
                failures[reason] = failures.get(reason, 0) + 1
                return
            first.append(r.t_first_data - r.t_sent)

    watch.start()
    await asyncio.gather(*[open_one() for _ in range(args.streams)])
    t_all = now()
    open_now = sum(1 for c in conns if c.result is not None and c.result.events > 0)
    mem_open = mem_kib(watch.pid) if watch.pid else {}
    await asyncio.sleep(max(0, min(args.hold, deadline - now())))
    still_open = sum(1 for c in conns if c.result is not None and c.result.events > 0)
    mem_held = mem_kib(watch.pid) if watch.pid else {}
    events = sum(c.result.events for c in conns if c.result is not None)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(args.after_close)
    watch.stop()
    return {
        "mode": "hold",
        "streams_requested": args.streams,
        "streams_with_first_event": len(first),
        "open_when_measured": open_now,
        "open_after_hold": still_open,
        "events_while_held": events,
        "seconds_to_open_all": round(t_all - t0, 3),
        "failures": failures,
        "ttfd": lat_summary(first),
        "rss_kib_all_open": mem_open.get("VmRSS"),
        "rss_kib_after_hold": mem_held.get("VmRSS"),
        "proc": watch.report(),
    }


MODES = {"rps": run_rps, "latency": run_latency, "sse": run_sse, "ttfb": run_ttfb, "hold": run_hold}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--url", required=True)
    p.add_argument("--auth-header", required=True)
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--concurrency", "-c", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the window (rps, sse)")
    p.add_argument("--count", type=int, default=500, help="requests (latency) or streams (ttfb)")
    p.add_argument("--warmup-count", type=int, default=50)
    p.add_argument("--max-tokens", type=int, help="max_tokens in the body (caps the fake's frames)")
    p.add_argument("--include-usage", action="store_true", help="stream_options.include_usage")
    p.add_argument("--streams", type=int, default=1000, help="hold: streams to open")
    p.add_argument("--open-concurrency", type=int, default=100)
    p.add_argument("--hold", type=float, default=3.0, help="hold: seconds to keep them open")
    p.add_argument("--after-close", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=30.0, help="per request/stream")
    p.add_argument("--time-limit", type=float, default=120.0, help="bound of count-based modes")
    p.add_argument("--pid", type=int)
    p.add_argument("--also-pids", default="", help="comma-separated: more processes whose CPU counts with --pid's")
    args = p.parse_args(argv)

    body: dict = {"model": args.model, "messages": PROMPT}
    if args.mode in ("sse", "ttfb", "hold"):
        body["stream"] = True
        if args.include_usage:
            body["stream_options"] = {"include_usage": True}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    target = Target(args.url, args.auth_header, body)
    watch = ProcWatch(args.pid, tuple(int(pid) for pid in args.also_pids.split(",") if pid))
    result = asyncio.run(MODES[args.mode](args, target, watch))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
