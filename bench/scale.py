"""The scale-out bench (``bench/run scale``; see bench/README.md): what Redis costs one
process, and what a second worker adds.

One run, on PostgreSQL (a database created for it), the fast fake upstream and a Redis of
its own (pinned with the load generator and the upstream to core 1):

- ``redis``: one ``omixa serve`` pinned to core 0, without and with ``[cluster] redis_url``,
  in interleaved rounds (without, with; then with, without; ...): c64 req/s, CPU per request, p50 at
  one connection, and Redis's and PostgreSQL's work per 1,000 requests.
- ``workers``: ``omixa serve --workers 1`` on core 0 and ``--workers 2`` with one worker
  pinned on each core, with Redis, in interleaved rounds: c64 req/s and CPU per request. On
  a two-core machine the second worker shares core 1 with the upstream and the load
  generator, so the ratio says what this machine allows, not what two free cores give.

- ``metrics``: one ``omixa serve`` pinned to core 0, without Redis, with ``[metrics] enabled =
  false`` ("off") and with metrics on ("on": ``[metrics] bind``, scraped every
  ``--scrape-seconds`` during the window, as Prometheus would); ``--metrics-variants`` adds
  "on-unscraped" and "off-again" (the "off" configuration measured twice per round: how far
  two identical gateways drift apart, the yardstick for the others). In interleaved rounds:
  c64 req/s, CPU per request, p50 at one connection; each ratio is per round against "off".

Rounds run in ABBA order (the variants reversed every other round), and PostgreSQL's backends
of the bench's database are pinned to core 1 after the warm-up, so neither the order nor the
database sharing the gateway's core weighs on one variant. ``--profile`` records py-spy's
stacks of each c64 window (raw folded format) into the results folder.

``--only redis,workers,metrics`` picks the studies (default: all three).

The deployment and the key have limits far above the load (rpm 10^8, tpm 10^12 and 2 x 10^9), so every
request is counted in the shared windows and nothing is refused. No figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness_procs import (
    API_VERSION,
    BENCH,
    MODEL_FAST,
    OMIXA,
    PG_ADMIN,
    PG_URL,
    UPSTREAM_KEY,
    BenchError,
    Load,
    Upstream,
    brief,
    log,
    pinned,
    read_line_with,
    run_cli,
    stop,
    values,
)

CONFIG = """\
[server]
host = "127.0.0.1"
[upstream]
max_connections = 1100
[storage]
url = "{db}"
{cluster}
[[deployments]]
name = "bench-fast"
model = "{model}"
endpoint = "{endpoint}"
deployment = "{model}"
api_key = "{key}"
api_version = "{api_version}"
rpm = 100000000
tpm = 1000000000000
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Redis:
    def __init__(self, core: int | None) -> None:
        self.port = free_port()
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(pinned(core, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        for _ in range(100):
            if self.info().get("redis_version"):
                return
            time.sleep(0.05)
        raise BenchError("redis-server did not start")

    def info(self) -> dict[str, str]:
        try:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.port), "INFO", "all"], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith("#"))
        return {k: v.strip() for k, v in pairs}

    def counters(self) -> dict[str, float]:
        """Round trips (the scripts and SET calls Omixa makes), every command run (those
        inside the scripts included) and Redis's CPU seconds, so far."""
        info = self.info()

        def calls(name: str, field: str = "calls") -> int:
            stat = info.get(f"cmdstat_{name}", f"{field}=0,")
            return int(float(stat.split(f"{field}=")[1].split(",")[0]))

        return {
            "trips": calls("evalsha") + calls("eval") + calls("set"),
            "script_usec": calls("evalsha", "usec") + calls("eval", "usec"),
            "scripts": calls("evalsha") + calls("eval"),
            "commands": sum(calls(k.removeprefix("cmdstat_")) for k in info if k.startswith("cmdstat_")),
            "cpu": float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0)),
        }

    def close(self) -> None:
        stop(self.proc, signal.SIGTERM, 10)


# PostgreSQL publishes a backend's transaction counts at most once a second.
PG_STATS_DELAY = 1.5


def pg_commits(db: str) -> int:
    out = subprocess.run(
        [*PG_ADMIN, "-tA", "-c", f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    return int(out.strip() or 0)


def pin_backends(db: str, core: int | None) -> int:
    """Pins the PostgreSQL backends serving ``db`` to ``core`` (with the load generator and
    the upstream), so they do not take the gateway's core at random: a noise source in
    every variant otherwise. Returns how many it pinned."""
    if core is None:
        return 0
    out = subprocess.run(
        [*PG_ADMIN, "-tA", "-c", f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}'"],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    pinned = 0
    for pid in out.split():
        if subprocess.run(["taskset", "-pc", str(core), pid], capture_output=True).returncode == 0:
            pinned += 1
    return pinned


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (started by any of its threads)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(found)


class Gateway:
    """``omixa serve`` (``workers`` > 0: with ``--workers``, each worker pinned to ``cores``)."""

    def __init__(self, config: Path, cores: list[int] | None, workers: int, log_path: Path, env: dict) -> None:
        argv = [OMIXA, "serve", "--config", str(config), "--port", "0"]
        if workers:
            argv += ["--workers", str(workers)]
        core_list = ",".join(map(str, cores)) if cores else None
        self.proc = subprocess.Popen(
            ["taskset", "-c", core_list, *argv] if core_list else argv,
            stdout=subprocess.PIPE, stderr=open(log_path, "ab"), env=env, cwd=config.parent,
        )  # fmt: skip
        self.base = read_line_with(self.proc, "OMIXA_BASE_URL=", 120)
        self.workers = children(self.proc.pid) if workers > 1 else []
        if len(self.workers) != (workers if workers > 1 else 0):
            raise BenchError(f"expected {workers} workers, found {self.workers}")
        if self.workers and cores:
            for worker, core in zip(self.workers, cores, strict=False):
                subprocess.run(["taskset", "-pc", str(core), str(worker)], capture_output=True, check=True)
        # The process that serves (one) or the supervisor, and the workers' pids for CPU.
        self.pid = self.proc.pid

    def close(self) -> dict:
        return stop(self.proc, signal.SIGINT, 40)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--out", help="results folder (default bench/results/scale-<timestamp>)")
    ap.add_argument("--only", default="redis,workers,metrics", help="comma-separated studies to run")
    ap.add_argument("--profile", action="store_true", help="py-spy each c64 window (folded stacks in the results)")
    ap.add_argument(
        "--metrics-variants",
        default="off,on",
        help="metrics study: off, on (scraped), on-unscraped, off-again (a second off: the noise's yardstick)",
    )
    ap.add_argument("--scrape-seconds", type=float, default=5.0, help="metrics study: scrape interval")
    args = ap.parse_args(argv)
    studies = set(args.only.split(","))
    metrics_variants = args.metrics_variants.split(",")
    if not {"off", "on"} <= set(metrics_variants) <= set(METRICS_VARIANTS):
        ap.error(f"--metrics-variants: off and on, and any of {', '.join(METRICS_VARIANTS)}")
    started = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    outdir = Path(args.out) if args.out else BENCH / "results" / f"scale-{started}"
    outdir.mkdir(parents=True, exist_ok=True)
    gw_core, side = (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)
    results: dict[str, Any] = {"started": started, "rounds": args.rounds, "duration": args.duration}
    tmp = Path(tempfile.mkdtemp(prefix="omixa-bench-scale-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMIXA_", "AZURE_STREAM_"))}
    db = f"omixa_bench_scale_{os.getpid()}"
    subprocess.run([*PG_ADMIN, "-q", "-c", f"CREATE DATABASE {db}"], check=True, capture_output=True, timeout=60)
    fast = redis = None
    try:
        fast = Upstream("fast", side, outdir, workers=3, events=2000)
        redis = Redis(side)
        load = Load(side, outdir)
        configs = {}
        metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        sections = (
            ("local", ""),
            ("redis", f'[cluster]\nredis_url = "{redis.url}"\n'),
            ("metrics-off", "[metrics]\nenabled = false\n"),
            ("metrics-on", f'[metrics]\nbind = "{metrics_url.removeprefix("http://").removesuffix("/metrics")}"\n'),
        )
        for name, cluster in sections:
            configs[name] = tmp / f"{name}.toml"
            configs[name].write_text(CONFIG.format(
                db=PG_URL.format(db=db), cluster=cluster, model=MODEL_FAST, endpoint=fast.endpoint,
                key=UPSTREAM_KEY, api_version=API_VERSION,
            ))  # fmt: skip
        code, out, err = run_cli(["account", "create", "bench@example.com"], configs["local"], env)
        account = values(out)["OMIXA_ACCOUNT_ID"]
        run_cli(["wallet", "top-up", account, "1000000"], configs["local"], env)
        code, out, err = run_cli(["key", "create", account, "--rpm", "100000000", "--tpm", "2000000000"],
                                 configs["local"], env)  # fmt: skip
        if code:
            raise BenchError(f"key create failed: {err}")
        auth = f"Authorization: Bearer {values(out)['OMIXA_API_KEY']}"

        def measure(gateway: Gateway, label: str, latency: bool, scrape: bool = False) -> dict:
            url = f"{gateway.base}/chat/completions"
            scraper = Scraper(metrics_url, args.scrape_seconds) if scrape else None
            also = ",".join(map(str, gateway.workers))
            load(
                "rps", url, auth, limit=60, concurrency=16, duration=1.0, warmup=0.3, pid=gateway.pid, also_pids=also
            )  # fmt: skip  (warm-up)
            time.sleep(PG_STATS_DELAY)
            pin_backends(db, side)  # after the warm-up: the pool has its connections
            r0, c0 = redis.counters(), pg_commits(db)
            spy = None
            if args.profile:  # py-spy samples the serving process over the c64 window
                folded = outdir / f"profile-{label.replace(' ', '-')}.txt"
                spy = subprocess.Popen(
                    [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(gateway.pid), "--format", "raw", "--nonblocking",
                     "--rate", "250", "--duration", str(int(args.duration + 1)), "--output", str(folded)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            rps = load("rps", url, auth, limit=args.duration + 90, concurrency=64, duration=args.duration,
                       warmup=1.0, pid=gateway.pid, also_pids=also)  # fmt: skip
            if spy is not None:
                spy.wait(timeout=60)
            time.sleep(PG_STATS_DELAY)
            r1, c1 = redis.counters(), pg_commits(db)
            out: dict[str, Any] = {"rps_c64": rps}
            done = rps.get("ok", 0) or rps.get("requests", 0) or 1
            # Counted over warm-up and window alike: per 1,000 requests of the whole run.
            total = rps.get("requests_total") or done
            out["redis_round_trips_per_1000"] = round((r1["trips"] - r0["trips"]) * 1000 / total, 1)
            out["redis_commands_per_1000"] = round((r1["commands"] - r0["commands"]) * 1000 / total, 1)
            scripts = r1["scripts"] - r0["scripts"]
            if scripts:
                out["redis_usec_per_script"] = round((r1["script_usec"] - r0["script_usec"]) / scripts, 1)
            out["redis_cpu_ms_per_1000"] = round((r1["cpu"] - r0["cpu"]) * 1e6 / total, 1)
            out["pg_transactions_per_1000"] = round((c1 - c0) * 1000 / total, 1)
            if latency:
                out["latency_c1"] = load("latency", url, auth, limit=180, count=500, warmup_count=50, time_limit=120,
                                         pid=gateway.pid, also_pids=also)  # fmt: skip
            if scraper is not None:
                out["scrapes"] = scraper.stop()
            log(f"{label}: {brief(rps)}" + (f" | c1 {brief(out['latency_c1'])}" if latency else ""))
            return out

        plans = {
            "redis": [("without", configs["local"], [gw_core] if gw_core is not None else None, 0),
                      ("with", configs["redis"], [gw_core] if gw_core is not None else None, 0)],
            "workers": [("1 worker", configs["redis"], [0] if gw_core is not None else None, 1),
                        ("2 workers", configs["redis"], [0, 1] if gw_core is not None else None, 2)],
            "metrics": [(label, configs["metrics-off" if label.startswith("off") else "metrics-on"],
                         [gw_core] if gw_core is not None else None, 0) for label in metrics_variants],
        }  # fmt: skip
        for study, variants in plans.items():
            if study not in studies:
                continue
            rounds: list[dict] = []
            for r in range(args.rounds):
                row = {}
                # ABBA order: a drift over the run (the database growing, the host's noise)
                # weighs on both variants alike.
                for label, config, cores, workers in variants if r % 2 == 0 else variants[::-1]:
                    gateway = Gateway(config, cores, workers, outdir / f"omixa-{study}.log", env)
                    try:
                        row[label] = measure(
                            gateway,
                            f"{study} round {r + 1} {label}",
                            study in ("redis", "metrics"),
                            scrape=study == "metrics" and label == "on",  # "on-unscraped" is not
                        )
                    finally:
                        row[label]["shutdown"] = gateway.close()
                rounds.append(row)
            results[study] = rounds
        results["summary"] = summarize(results)
    finally:
        for proc in (redis, fast):
            if proc is not None:
                proc.close()
        subprocess.run([*PG_ADMIN, "-q", "-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)
    (outdir / "results.json").write_text(json.dumps(results, indent=1))
    print(render(results["summary"]))
    log(f"results in {outdir}")
    return 0


METRICS_VARIANTS = ("off", "on", "on-unscraped", "off-again")


def _median(rounds: list[dict], label: str, *path: str) -> float | None:
    values_ = []
    for row in rounds:
        value: Any = row.get(label, {})
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            values_.append(float(value))
    return round(statistics.median(values_), 3) if values_ else None


def summarize(results: dict) -> dict:
    out: dict[str, Any] = {}
    rounds = results.get("redis", [])
    for label in ("without", "with"):
        out[f"redis_{label}"] = {
            "rps_c64": _median(rounds, label, "rps_c64", "rps"),
            "cpu_ms_per_request": _median(rounds, label, "rps_c64", "cpu_ms_per_request"),
            "p50_ms_c1": _median(rounds, label, "latency_c1", "latency", "p50_ms"),
            "redis_round_trips_per_1000": _median(rounds, label, "redis_round_trips_per_1000"),
            "redis_commands_per_1000": _median(rounds, label, "redis_commands_per_1000"),
            "redis_usec_per_script": _median(rounds, label, "redis_usec_per_script"),
            "redis_cpu_ms_per_1000": _median(rounds, label, "redis_cpu_ms_per_1000"),
            "pg_transactions_per_1000": _median(rounds, label, "pg_transactions_per_1000"),
        }
    rounds = results.get("workers", [])
    for label in ("1 worker", "2 workers"):
        out[label] = {
            "rps_c64": _median(rounds, label, "rps_c64", "rps"),
            "cpu_ms_per_request": _median(rounds, label, "rps_c64", "cpu_ms_per_request"),
        }
    rounds = results.get("metrics", [])
    for label in METRICS_VARIANTS:
        if not any(label in row for row in rounds):
            continue
        out[f"metrics_{label}"] = {
            "rps_c64": _median(rounds, label, "rps_c64", "rps"),
            "cpu_ms_per_request": _median(rounds, label, "rps_c64", "cpu_ms_per_request"),
            "p50_ms_c1": _median(rounds, label, "latency_c1", "latency", "p50_ms"),
        }
        if label == "off":
            continue
        # Per round, against that round's "off": the figure the done-when line asks for.
        ratios = [row[label]["rps_c64"]["rps"] / row["off"]["rps_c64"]["rps"] for row in rounds
                  if row.get(label, {}).get("rps_c64", {}).get("rps") and row["off"]["rps_c64"].get("rps")]  # fmt: skip
        if ratios:
            name = "metrics_rps_ratio" if label == "on" else f"metrics_{label.replace('-', '_')}_rps_ratio"
            out[name] = round(statistics.median(ratios), 3)
            out[f"{name}_rounds"] = [round(r, 3) for r in ratios]
    on, off = out.get("metrics_on", {}), out.get("metrics_off", {})
    if on.get("p50_ms_c1") and off.get("p50_ms_c1"):
        out["metrics_added_p50_ms"] = round(on["p50_ms_c1"] - off["p50_ms_c1"], 3)
    with_, without = out["redis_with"], out["redis_without"]
    if with_["rps_c64"] and without["rps_c64"]:
        out["redis_rps_ratio"] = round(with_["rps_c64"] / without["rps_c64"], 3)
    if with_["p50_ms_c1"] and without["p50_ms_c1"]:
        out["redis_added_p50_ms"] = round(with_["p50_ms_c1"] - without["p50_ms_c1"], 3)
    one, two = out["1 worker"], out["2 workers"]
    if one["rps_c64"] and two["rps_c64"]:
        out["workers_rps_ratio"] = round(two["rps_c64"] / one["rps_c64"], 3)
    return out


class Scraper:
    """Scrapes ``url`` every ``interval`` seconds from a thread of its own until stopped."""

    def __init__(self, url: str, interval: float) -> None:
        self._url, self._interval = url, interval
        self._stopped = threading.Event()
        self.count, self.failures, self.bytes = 0, 0, 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                with urllib.request.urlopen(self._url, timeout=10) as answer:
                    self.bytes = len(answer.read())
                self.count += 1
            except OSError:
                self.failures += 1

    def stop(self) -> dict:
        self._stopped.set()
        self._thread.join(timeout=15)
        return {"scrapes": self.count, "failures": self.failures, "last_bytes": self.bytes}


def render(summary: dict) -> str:
    return "\n".join(f"{key}: {json.dumps(value)}" for key, value in summary.items())


if __name__ == "__main__":
    sys.exit(main())
