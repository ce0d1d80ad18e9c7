"""Orchestrates one benchmark run (called by ``bench/run``; see bench/README.md).

One run: start the fake upstreams (bench/upstream.py), then per storage backend (SQLite
file, PostgreSQL database created for the run) write a config, create an account, a key and
a large top-up with the ``omixa`` CLI, start the real ``omixa serve`` pinned to core 0, run
every scenario against the upstream directly and through Omixa in interleaved rounds
(direct, gateway, direct, gateway, ...), hold 1,000 slow streams open to read Omixa's RSS,
stop Omixa with SIGINT, check the ledger, and drop the database. Results (raw JSON of every
round, Omixa's log, a markdown summary) go to bench/results/<timestamp>/; the summary table
is printed at the end.

No figure is asserted: the run reports, and the README compares with the targets.

This module holds the run's parameters, the reference relay's rounds and ``main``; the rest
is in harness_procs.py (the child processes: upstreams, load generator, CLI),
harness_backend.py (one backend's run) and harness_summary.py (the figures and the summary).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness_backend import Backend
from harness_procs import (
    BENCH,
    MODEL_FAST,
    PY,
    ROOT,
    UPSTREAM_KEY,
    BenchError,
    Load,
    Upstream,
    interleaved,
    log,
    pinned,
    read_line_with,
    rss_kib,
    stop,
)
from harness_summary import render, summarize

FULL = dict(
    rounds=3, rps_duration=5.0, rps_warmup=1.0, latency_count=1000, sse_duration=5.0,
    sse_warmup=1.0, sse_events=2000, ttfb_count=200, ttfb_tokens=8, hold_streams=1000,
    hold_seconds=3.0, stall_count=500, stall_body_bytes=4_000_000,
)  # fmt: skip
QUICK = dict(
    rounds=1, rps_duration=1.5, rps_warmup=0.5, latency_count=300, sse_duration=2.0,
    sse_warmup=0.5, sse_events=2000, ttfb_count=50, ttfb_tokens=8, hold_streams=200,
    hold_seconds=1.0, stall_count=200, stall_body_bytes=4_000_000,
)  # fmt: skip


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git: dict[str, str | list[str]] = {}
    try:
        git["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--short", "--", "engine", "web", "storage", "config", "pyproject.toml"],
            capture_output=True,
            text=True,
        ).stdout
        git["uncommitted_project_files"] = [line[3:] for line in status.splitlines()]
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "git": git,
    }


# ---------------------------------------------------------------------------------------
# the reference: a minimal Quart-Trio relay on the same run
# ---------------------------------------------------------------------------------------


def run_reference(p: dict, fast: Upstream, load: Load, core: int | None, outdir: Path) -> dict:
    """The stack's ceiling on this run: bench/reference_relay.py (no auth, billing, routing
    or logging) on Omixa's core, in interleaved rounds with direct calls, like a backend."""
    argv = [PY, str(BENCH / "reference_relay.py"), "--upstream", fast.url(MODEL_FAST), "--api-key", UPSTREAM_KEY]
    proc = subprocess.Popen(
        pinned(core, argv), stdout=subprocess.PIPE, stderr=open(outdir / "reference-relay.log", "wb")
    )
    out: dict[str, Any] = {"scenarios": {}, "problems": []}
    try:
        url = f"http://127.0.0.1:{read_line_with(proc, 'RELAY_PORT=', 30)}/v1/chat/completions"
        out["rss_kib_idle_after_start"] = rss_kib(proc.pid)
        auth = "X-Bench: reference"
        load("rps", url, auth, limit=60, concurrency=16, duration=1.0, warmup=0.2)  # warm-up
        plans = {
            "rps_c64": ("rps", p["rps_warmup"] + p["rps_duration"] + 90,
                        dict(concurrency=64, duration=p["rps_duration"], warmup=p["rps_warmup"])),
            "latency_c1": ("latency", 180, dict(count=p["latency_count"], warmup_count=50, time_limit=120)),
            "sse_c4": ("sse", p["sse_warmup"] + p["sse_duration"] + 90,
                       dict(concurrency=4, duration=p["sse_duration"], warmup=p["sse_warmup"], include_usage=True)),
        }  # fmt: skip
        for name, (mode, limit, opts) in plans.items():
            out["scenarios"][name] = interleaved(
                load, p["rounds"], fast, f"reference {name}", mode, limit,
                (url, auth, proc.pid), opts, opts, out["problems"],
            )  # fmt: skip
    except BenchError as exc:
        out["problems"].append(f"aborted: {exc}")
    finally:
        out["shutdown"] = stop(proc, signal.SIGINT, 15)
    out["summary"] = summarize(out)
    return out


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench/run", description="Benchmark Omixa against its fake upstream, direct vs through the gateway."
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, short durations (< 2 min)")
    ap.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 3; 1 with --quick)")
    ap.add_argument("--hold-streams", type=int, help="streams for the RSS scenario (default 1000; 200 with --quick)")
    ap.add_argument("--upstream-workers", type=int, default=3)
    ap.add_argument("--chunk-bytes", type=int, help="run Omixa with AZURE_STREAM_CHUNK_BYTES=N (default: 128)")
    ap.add_argument("--out", help="results folder (default bench/results/<timestamp>)")
    ap.add_argument("--no-reference", action="store_true", help="skip the minimal Quart-Trio relay's rounds")
    args = ap.parse_args(argv)
    p = dict(QUICK if args.quick else FULL)
    if args.rounds:
        p["rounds"] = args.rounds
    if args.hold_streams:
        p["hold_streams"] = args.hold_streams
    if args.chunk_bytes:
        p["chunk_bytes"] = args.chunk_bytes
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgres"):
            ap.error(f"unknown backend {b!r}")

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    outdir = Path(args.out) if args.out else BENCH / "results" / started
    outdir.mkdir(parents=True, exist_ok=True)
    can_pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    gw_core, side_core = (0, 1) if can_pin else (None, None)
    pinning = (
        "Omixa on core 0; upstream workers and the load generator on core 1"
        if can_pin else "none (taskset missing or one core)"
    )  # fmt: skip
    results: dict[str, Any] = {
        "started": started,
        "mode": "quick" if args.quick else "full",
        "params": p,
        "machine": machine(),
        "pinning": pinning,
        "backends": [],
        "problems": [],
    }
    # Raise our own open-files limit for the 1,000-stream scenario (children inherit it).
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass

    t0 = time.monotonic()
    log(f"results in {outdir}; {results['mode']} run, backends {backends}, {pinning}")
    fast = slow = None
    interrupted = False
    try:
        fast = Upstream("fast", side_core, outdir, workers=args.upstream_workers, events=p["sse_events"])
        slow = Upstream("slow", side_core, outdir, workers=1, events=600, event_interval_ms=1000)
        results["upstream"] = {
            "fast": fast.endpoint,
            "slow": slow.endpoint,
            "log": (outdir / "upstream-fast.log").read_text().strip(),
        }
        load = Load(side_core, outdir)
        if not args.no_reference:
            results["reference"] = run_reference(p, fast, load, gw_core, outdir)
        for name in backends:
            backend = Backend(name, p, fast, slow, load, outdir)
            backend.load_core_gateway = gw_core
            results["backends"].append(backend.result)
            try:
                backend.setup()
                backend.start()
                backend.run_all()
            except BenchError as exc:
                backend.result["problems"].append(f"aborted: {exc}")
                log(f"{name}: aborted: {exc}")
            finally:
                try:
                    backend.finish()
                finally:
                    backend.cleanup()
            backend.result["summary"] = summarize(backend.result)
            (outdir / "results.json").write_text(json.dumps(results, indent=1))
    except KeyboardInterrupt:
        interrupted = True
        results["problems"].append("interrupted")
    except BenchError as exc:
        results["problems"].append(str(exc))
        log(f"aborted: {exc}")
    finally:
        for up in (slow, fast):
            if up is not None:
                up.close()
    for b in results["backends"]:
        b.setdefault("summary", summarize(b))
    results["seconds"] = round(time.monotonic() - t0, 1)
    (outdir / "results.json").write_text(json.dumps(results, indent=1))
    report = (
        render(results)
        + f"\nWall time of the run: {results['seconds']} s. Raw results: `{outdir.relative_to(ROOT) if outdir.is_relative_to(ROOT) else outdir}/results.json`.\n"
    )
    (outdir / "summary.md").write_text(report)
    latest = BENCH / "results" / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(outdir.resolve())
    except OSError:
        pass
    print(report)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
