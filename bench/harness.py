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
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
OMIXA = str(Path(PY).parent / "omixa")
MODEL_FAST = "gpt-4o-mini"
MODEL_SLOW = "gpt-4.1-nano"
API_VERSION = "2024-10-21"
UPSTREAM_KEY = "bench-upstream-key"
PG_ADMIN = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1"]
PG_URL = "postgresql://postgres@127.0.0.1:5432/{db}"
POOL_SIZE = 1100  # Omixa's upstream pool must hold 1,000 concurrent streams per origin

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


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------
def pinned(core: int | None, argv: list[str]) -> list[str]:
    if core is None:
        return argv
    return ["taskset", "-c", str(core), *argv]


def read_line_with(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """Read ``proc``'s stdout until a line starting with ``prefix``; return the rest."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        if proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode} before printing {prefix}")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace").strip()
            if text.startswith(prefix):
                return text[len(prefix) :]
    raise BenchError(f"{proc.args!r} printed no {prefix} line within {timeout:g} s")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGINT, timeout: float = 40.0) -> dict:
    """Signal ``proc`` (by its pid), wait, kill it if it outlives ``timeout``."""
    if proc is None:
        return {}
    if proc.poll() is not None:
        return {"exit": proc.returncode, "seconds": 0.0, "killed": False, "already_exited": True}
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=timeout)
        return {"exit": code, "seconds": round(time.monotonic() - t0, 2), "killed": False}
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait(timeout=10)
        return {"exit": code, "seconds": round(time.monotonic() - t0, 2), "killed": True}


class Upstream:
    def __init__(self, name: str, core: int | None, logdir: Path, **flags: Any) -> None:
        argv = [PY, str(BENCH / "upstream.py"), "--port", "0"]
        for key, value in flags.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.log_path = logdir / f"upstream-{name}.log"
        self.proc = subprocess.Popen(pinned(core, argv), stdout=subprocess.PIPE, stderr=open(self.log_path, "wb"))
        self.port = int(read_line_with(self.proc, "UPSTREAM_PORT=", 30))
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log(f"upstream {name}: {self.endpoint} ({' '.join(argv[3:])})")

    def url(self, deployment: str) -> str:
        return f"{self.endpoint}/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}"

    def close(self) -> dict:
        return stop(self.proc, signal.SIGTERM, 15)


def run_cli(args: list[str], config: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = subprocess.run(
        [OMIXA, *args[:2], "--config", str(config), *args[2:]],
        capture_output=True, text=True, timeout=120, env=env, cwd=config.parent,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def values(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.isupper():
            out[name.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------
# the load generator
# ---------------------------------------------------------------------------------------
class Load:
    def __init__(self, core: int | None, logdir: Path) -> None:
        self.core = core
        self.logdir = logdir
        self.runs = 0

    def __call__(self, mode: str, url: str, auth: str, *, limit: float, **opts: Any) -> dict:
        argv = [PY, str(BENCH / "load.py"), mode, "--url", url, "--auth-header", auth]
        for key, value in opts.items():
            if value is True:
                argv.append(f"--{key.replace('_', '-')}")
            elif value is not None and value is not False:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        self.runs += 1
        try:
            proc = subprocess.run(pinned(self.core, argv), capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            return {"error": f"load generator exceeded {limit:g} s", "stderr": str(exc.stderr)[-2000:]}
        if proc.returncode != 0 or not proc.stdout.strip():
            return {"error": f"load generator exit {proc.returncode}", "stderr": proc.stderr[-2000:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved(
    load: Load,
    rounds: int,
    fast: Upstream,
    label: str,
    mode: str,
    limit: float,
    gateway: tuple[str, str, int],
    direct_opts: dict,
    gw_opts: dict,
    problems: list[str],
) -> list[dict]:
    """``rounds`` rounds of one scenario: direct to the fast upstream, then through the
    gateway (``gateway``: its URL, auth header and pid), and again. Failed runs go into
    ``problems``."""
    url, auth, pid = gateway
    out = []
    for r in range(rounds):
        d = load(mode, fast.url(MODEL_FAST), Backend.direct_auth, limit=limit, **direct_opts)
        g = load(mode, url, auth, limit=limit, pid=pid, **gw_opts)
        out.append({"direct": d, "gateway": g})
        for side, res in (("direct", d), ("gateway", g)):
            if "error" in res:
                problems.append(f"{label} round {r + 1} {side}: {res['error']}: {res.get('stderr', '')[-300:]}")
        log(f"{label} round {r + 1}: direct {brief(d)} | gateway {brief(g)}")
    return out


# ---------------------------------------------------------------------------------------
# one backend
# ---------------------------------------------------------------------------------------
CONFIG_TEMPLATE = """\
# Written by bench/harness.py for one benchmark run.
[server]
host = "127.0.0.1"
{server_extra}
{pool_section}
[storage]
url = "{storage_url}"

[[deployments]]
name = "bench-fast"
model = "{fast_model}"
provider = "azure"
endpoint = "{fast_endpoint}"
deployment = "{fast_model}"
api_key = "{key}"
api_version = "{api_version}"
region = "local"

[[deployments]]
name = "bench-slow"
model = "{slow_model}"
provider = "azure"
endpoint = "{slow_endpoint}"
deployment = "{slow_model}"
api_key = "{key}"
api_version = "{api_version}"
region = "local"
"""
# The pool-size key moved between Omixa versions; the first layout the loader accepts is used.
POOL_VARIANTS = [
    ("", f"[upstream]\nmax_connections = {POOL_SIZE}\n"),  # current: [upstream]
    (f"upstream_max_connections = {POOL_SIZE}\n", ""),  # older: under [server]
]


def write_config(path: Path, storage_url: str, fast: Upstream, slow: Upstream, pool: tuple[str, str]) -> None:
    path.write_text(
        CONFIG_TEMPLATE.format(
            server_extra=pool[0],
            pool_section=pool[1],
            storage_url=storage_url,
            fast_model=MODEL_FAST,
            slow_model=MODEL_SLOW,
            fast_endpoint=fast.endpoint,
            slow_endpoint=slow.endpoint,
            key=UPSTREAM_KEY,
            api_version=API_VERSION,
        )
    )


def load_prompt() -> list:
    sys.path.insert(0, str(BENCH))
    try:
        from load import PROMPT
    finally:
        sys.path.pop(0)
    return PROMPT


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Backend:
    def __init__(self, name: str, p: dict, fast: Upstream, slow: Upstream, load: Load, outdir: Path):
        self.name = name
        self.p = p
        self.fast = fast
        self.slow = slow
        self.load = load
        self.outdir = outdir
        self.tmp = Path(tempfile.mkdtemp(prefix=f"omixa-bench-{name}-"))
        self.config = self.tmp / "omixa.toml"
        self.env = {k: v for k, v in os.environ.items() if k not in ("OMIXA_DATABASE_URL", "OMIXA_CONFIG")}
        self.env.pop("AZURE_STREAM_CHUNK_BYTES", None)
        self.env.pop("AZURE_STREAM_HEARTBEAT_SECONDS", None)
        self.env.pop("AZURE_STREAM_FLUSH_PADDING_BYTES", None)
        if p.get("chunk_bytes"):  # --chunk-bytes: the one streaming knob a run may change
            self.env["AZURE_STREAM_CHUNK_BYTES"] = str(p["chunk_bytes"])
        self.db: str | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = outdir / f"omixa-{name}.log"
        self.result: dict[str, Any] = {"backend": name, "scenarios": {}, "problems": []}

    # --- setup ---------------------------------------------------------------------------
    def storage_url(self) -> str:
        if self.name == "sqlite":
            return f"sqlite:///{self.tmp / 'omixa.db'}"
        self.db = f"omixa_bench_{os.getpid()}_{int(time.time())}"
        subprocess.run([*PG_ADMIN, "-q", "-c", f"CREATE DATABASE {self.db}"], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        log(f"postgresql: created database {self.db}")
        return PG_URL.format(db=self.db)

    def setup(self) -> None:
        url = self.storage_url()
        self.result["storage_url"] = url
        last = ""
        for pool in POOL_VARIANTS:
            write_config(self.config, url, self.fast, self.slow, pool)
            code, out, err = run_cli(["account", "create", "bench@example.com"], self.config, self.env)
            if code == 0:
                break
            last = err.strip()
            if "unknown key" not in err:
                raise BenchError(f"omixa account create failed ({code}): {last}")
        else:
            raise BenchError(f"no config layout accepted by this Omixa: {last}")
        self.result["config"] = self.config.read_text()
        shutil.copy(self.config, self.outdir / f"omixa-{self.name}.toml")
        account = values(out)["OMIXA_ACCOUNT_ID"]
        # The benchmark key must not be rate limited (Omixa's per-key default is 600 rpm);
        # older Omixa versions know fewer flags, so the first form accepted is used.
        for flags in (["--rpm", "0", "--tpm", "0"], ["--rpm", "0"], []):
            code, out, err = run_cli(["key", "create", account, *flags], self.config, self.env)
            if code == 0:
                self.result["key_flags"] = flags
                break
        else:
            raise BenchError(f"omixa key create failed ({code}): {err.strip()}")
        self.api_key = values(out)["OMIXA_API_KEY"]
        code, out, err = run_cli(["wallet", "top-up", account, "1000000"], self.config, self.env)
        if code != 0:
            raise BenchError(f"omixa wallet top-up failed ({code}): {err.strip()}")
        self.result["account"] = account
        self.result["balance_after_top_up"] = values(out).get("OMIXA_BALANCE")
        # A second account that never has money, for the stall scenario's flood.
        code, out, err = run_cli(["account", "create", "empty@example.com"], self.config, self.env)
        if code == 0:
            code, out, err = run_cli(
                ["key", "create", values(out)["OMIXA_ACCOUNT_ID"], *self.result["key_flags"]], self.config, self.env
            )
        if code != 0:
            raise BenchError(f"creating the empty account's key failed ({code}): {err.strip()}")
        self.empty_key = values(out)["OMIXA_API_KEY"]

    def start(self) -> None:
        argv = [OMIXA, "serve", "--config", str(self.config), "--port", "0"]
        self.proc = subprocess.Popen(
            pinned(self.load_core_gateway, argv),
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "wb"),
            env=self.env,
            cwd=self.tmp,
        )
        base = read_line_with(self.proc, "OMIXA_BASE_URL=", 90)
        self.base_url = base
        self.chat_url = f"{base}/chat/completions"
        self.pid = self.proc.pid
        time.sleep(0.5)
        self.probe()
        self.result["pid"] = self.pid
        self.result["rss_kib_idle_after_start"] = _rss(self.pid)
        log(f"{self.name}: omixa serve pid {self.pid} at {base} (RSS {self.result['rss_kib_idle_after_start']} KiB)")

    load_core_gateway: int | None = 0

    def probe(self) -> None:
        """One request of each kind must succeed before anything is measured."""
        import urllib.error
        import urllib.request

        for stream in (False, True):
            # The load generator's prompt: the fake's usage (21 prompt tokens, 19 completion
            # tokens, or the stream's cap) stays within what Omixa holds for it.
            body: dict[str, Any] = {"model": MODEL_FAST, "messages": load_prompt()}
            if stream:
                body.update(stream=True, max_tokens=8)
            req = urllib.request.Request(
                self.chat_url,
                data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    data = resp.read()
                    headers = dict(resp.headers)
            except urllib.error.HTTPError as exc:
                raise BenchError(
                    f"probe {'stream' if stream else 'request'} got HTTP {exc.code}: {exc.read()[:500]!r}"
                ) from None
            except OSError as exc:
                raise BenchError(f"probe {'stream' if stream else 'request'} failed: {exc!r}") from None
            if stream and b"data: [DONE]" not in data:
                raise BenchError(f"probe stream did not end with [DONE]: {data[-300:]!r}")
            self.result.setdefault("probe_headers", {})["stream" if stream else "json"] = headers

    # --- helpers -----------------------------------------------------------------------------
    @property
    def gw_auth(self) -> str:
        return f"Authorization: Bearer {self.api_key}"

    direct_auth = f"api-key: {UPSTREAM_KEY}"

    def both(self, name: str, mode: str, limit: float, direct_opts: dict, gw_opts: dict) -> None:
        """Run a scenario in interleaved rounds: direct, gateway, direct, gateway, ..."""
        self.result["scenarios"][name] = interleaved(
            self.load, self.p["rounds"], self.fast, f"{self.name} {name}", mode, limit,
            (self.chat_url, self.gw_auth, self.pid), direct_opts, gw_opts, self.result["problems"],
        )  # fmt: skip

    # --- scenarios --------------------------------------------------------------------------------
    def run_all(self) -> None:
        p = self.p
        rps_limit = p["rps_warmup"] + p["rps_duration"] + 90
        # Warm Omixa up once (connections, wallet actor, code paths); not recorded.
        self.load("rps", self.chat_url, self.gw_auth, limit=60, concurrency=16, duration=1.0, warmup=0.2)
        self.load("ttfb", self.chat_url, self.gw_auth, limit=60, count=20, warmup_count=5, max_tokens=8)
        for c in (32, 64):
            opts = dict(concurrency=c, duration=p["rps_duration"], warmup=p["rps_warmup"])
            self.both(f"rps_c{c}", "rps", rps_limit, opts, opts)
        opts = dict(count=p["latency_count"], warmup_count=50, time_limit=120)
        self.both("latency_c1", "latency", 180, opts, opts)
        opts = dict(concurrency=4, duration=p["sse_duration"], warmup=p["sse_warmup"], include_usage=True)
        self.both("sse_c4", "sse", p["sse_warmup"] + p["sse_duration"] + 90, opts, opts)
        opts = dict(
            count=p["ttfb_count"], warmup_count=10, max_tokens=p["ttfb_tokens"], include_usage=True, time_limit=120
        )
        self.both("ttfb_c1", "ttfb", 180, opts, opts)
        self.hold()
        self.stall()  # last: what its large bodies leave in memory must not count above
        # Still healthy after everything?
        after = self.load("latency", self.chat_url, self.gw_auth, limit=60, count=20, warmup_count=1, time_limit=30)
        self.result["health_after"] = after
        if "error" in after or after.get("ok") != after.get("requests") or not after.get("requests"):
            self.result["problems"].append(f"gateway unhealthy after the run: {brief(after)}")

    def stall(self) -> None:
        """One-connection latency (the latency_c1 measurement) while two other connections
        send the largest accepted bodies (a prompt far over any context window) back to
        back: once from a key whose wallet is empty, once from the funded key. Whatever the
        gateway does with those bodies (refuse them, count their tokens) shows here as the
        time it takes from everyone else. Once per backend, after the other rounds."""
        p = self.p
        out: dict[str, Any] = {}
        for who, key in (("empty_wallet", self.empty_key), ("funded", self.api_key)):
            flood = subprocess.Popen(
                pinned(self.load.core, [
                    PY, str(BENCH / "flood.py"), self.chat_url, f"Authorization: Bearer {key}",
                    "--size", str(p["stall_body_bytes"]), "--connections", "2", "--duration", "12",
                ]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(1.0)  # the flood is under way
            latency = self.load(
                "latency", self.chat_url, self.gw_auth, limit=120, pid=self.pid,
                count=p["stall_count"], warmup_count=20, time_limit=10,
            )  # fmt: skip
            try:
                stdout, stderr = flood.communicate(timeout=60)
                flooded = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {"error": stderr[-500:]}
            except subprocess.TimeoutExpired:
                flood.kill()
                flooded = {"error": "flood did not end"}
            out[who] = {"latency": latency, "flood": flooded}
            log(f"{self.name} stall ({who}): {brief(latency)}; flood answers {flooded.get('answers')}")
        self.result["scenarios"]["stall"] = out
        time.sleep(1.0)
        self.result["rss_kib_after_stall"] = _rss(self.pid)

    def hold(self) -> None:
        p = self.p
        self.result["rss_kib_before_hold"] = _rss(self.pid)
        res = self.load(
            "hold", self.chat_url, self.gw_auth, limit=300, pid=self.pid, model=MODEL_SLOW,
            streams=p["hold_streams"], open_concurrency=100, hold=p["hold_seconds"],
            after_close=3.0, time_limit=200, include_usage=True,
        )  # fmt: skip
        self.result["scenarios"]["hold"] = res
        if "error" in res:
            self.result["problems"].append(f"hold: {res['error']}: {res.get('stderr', '')[-300:]}")
        elif res.get("streams_with_first_event") != res.get("streams_requested"):
            self.result["problems"].append(
                f"hold: only {res.get('streams_with_first_event')} of {res.get('streams_requested')} streams got their first event: {res.get('failures')}"
            )
        log(f"{self.name} hold: {brief(res)}")
        # Let the closed streams settle before the next step.
        time.sleep(2.0)

    # --- teardown ----------------------------------------------------------------------------
    def finish(self) -> None:
        if self.proc is not None:
            self.result["rss_kib_before_shutdown"] = _rss(self.pid)
            self.result["shutdown"] = stop(self.proc, signal.SIGINT, 45)
            sd = self.result["shutdown"]
            if sd.get("killed") or sd.get("exit") not in (0,):
                self.result["problems"].append(f"omixa serve shutdown: {sd}")
            log(f"{self.name}: omixa stopped {sd}")
            code, out, err = run_cli(["ledger", "verify"], self.config, self.env)
            self.result["ledger_verify"] = {"exit": code, "stderr": err.strip()[-2000:]}
            if code != 0:
                self.result["problems"].append(f"ledger verify exit {code}: {err.strip()[-500:]}")
            self.result["log"] = scan_log(self.log_path)
            if self.result["log"]["error_lines"]:
                self.result["problems"].append(
                    f"omixa log has {self.result['log']['error_lines']} ERROR/CRITICAL lines "
                    f"and {self.result['log']['tracebacks']} tracebacks (see {self.log_path.name})"
                )
            self.result["db_counts"] = self.db_counts()

    def db_counts(self) -> dict:
        queries = {
            "request_logs_by_status": "SELECT status, count(*) FROM request_logs GROUP BY status ORDER BY 2 DESC",
            "holds_by_state": "SELECT state, count(*) FROM holds GROUP BY state ORDER BY 2 DESC",
        }
        out: dict[str, Any] = {}
        for name, q in queries.items():
            try:
                if self.db:
                    proc = subprocess.run(
                        [*PG_ADMIN[:-2], "-d", self.db, "-At", "-F", "=", "-c", q],
                        capture_output=True, text=True, timeout=60,
                    )  # fmt: skip
                    rows = proc.stdout.strip().splitlines() if proc.returncode == 0 else [proc.stderr.strip()]
                else:
                    import sqlite3

                    con = sqlite3.connect(self.tmp / "omixa.db")
                    rows = [f"{a}={b}" for a, b in con.execute(q)]
                    con.close()
                out[name] = rows
            except Exception as exc:  # a schema change elsewhere must not sink the run
                out[name] = [f"query failed: {exc!r}"]
        return out

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc, signal.SIGKILL, 10)
        if self.db:
            proc = subprocess.run(
                [*PG_ADMIN, "-q", "-c", f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            log(
                f"postgresql: dropped database {self.db}"
                if proc.returncode == 0
                else f"postgresql: drop failed: {proc.stderr.strip()}"
            )
        shutil.rmtree(self.tmp, ignore_errors=True)


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def scan_log(path: Path) -> dict:
    levels: dict[str, int] = {}
    statuses: dict[str, int] = {}
    samples: list[str] = []
    tracebacks = 0
    line_re = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) ")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = line_re.match(line)
                if m:
                    levels[m.group(1)] = levels.get(m.group(1), 0) + 1
                    if m.group(2) == "omixa.request":
                        s = re.search(r" status=(\S+)", line)
                        if s:
                            statuses[s.group(1)] = statuses.get(s.group(1), 0) + 1
                    if m.group(1) in ("WARNING", "ERROR", "CRITICAL") and len(samples) < 20:
                        samples.append(line.strip()[:400])
                elif line.startswith("Traceback"):
                    tracebacks += 1
    except OSError:
        pass
    return {
        "lines_by_level": levels,
        "request_status": statuses,
        "error_lines": levels.get("ERROR", 0) + levels.get("CRITICAL", 0),
        "tracebacks": tracebacks,
        "warning_samples": samples,
    }


def brief(res: dict) -> str:
    if "error" in res:
        return f"ERROR {res['error']}"
    mode = res.get("mode")
    if mode == "rps":
        return f"{res['rps']} req/s p50 {res['latency']['p50_ms']} ms p99 {res['latency']['p99_ms']} ms non2xx {res['non_2xx']} failed {res['failed']}"
    if mode == "latency":
        return f"p50 {res['latency']['p50_ms']} ms p99 {res['latency']['p99_ms']} ms ok {res['ok']}/{res['requests']}"
    if mode == "sse":
        return f"{res['events_per_s']} ev/s streams ok {res['streams_ok']}/{res['streams']} failed {res['failed']}"
    if mode == "ttfb":
        return f"ttfb p50 {res['ttfb']['p50_ms']} ms, first data p50 {res['ttfd']['p50_ms']} ms, ok {res['streams_ok']}/{res['streams']}"
    if mode == "hold":
        return (f"{res['streams_with_first_event']}/{res['streams_requested']} streams open, RSS "
                f"{res['rss_kib_all_open']} KiB, opened in {res['seconds_to_open_all']} s")  # fmt: skip
    return json.dumps(res)[:200]


# ---------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------
def rounds_of(b: dict, name: str) -> list[dict]:
    return [r for r in b["scenarios"].get(name, []) if "error" not in r["direct"] and "error" not in r["gateway"]]


def get(d: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def summarize(b: dict) -> dict:
    """Median per metric over rounds; ratios and differences are taken per round, then the
    median of those."""
    s: dict[str, Any] = {}

    def pair(name: str, path: str, kind: str) -> None:
        rs = rounds_of(b, name)
        d = [get(r["direct"], path) for r in rs]
        g = [get(r["gateway"], path) for r in rs]
        ok = [(x, y) for x, y in zip(d, g, strict=True) if x is not None and y is not None]
        entry = {"direct": median(d), "gateway": median(g), "rounds": len(ok)}
        if kind == "ratio":
            entry["ratio"] = median([y / x for x, y in ok if x])
        else:
            entry["added"] = median([y - x for x, y in ok])
        s[f"{name}.{path}"] = entry

    for c in (32, 64):
        pair(f"rps_c{c}", "rps", "ratio")
        pair(f"rps_c{c}", "latency.p50_ms", "diff")
        pair(f"rps_c{c}", "latency.p99_ms", "diff")
    pair("latency_c1", "latency.p50_ms", "diff")
    pair("latency_c1", "latency.p99_ms", "diff")
    pair("sse_c4", "events_per_s", "ratio")
    pair("ttfb_c1", "ttfb.p50_ms", "diff")
    pair("ttfb_c1", "ttfb.p99_ms", "diff")
    pair("ttfb_c1", "ttfd.p50_ms", "diff")
    pair("ttfb_c1", "ttfd.p99_ms", "diff")
    errors = {"non_2xx": 0, "failed": 0, "stream_problems": 0}
    for name, rs in b["scenarios"].items():
        if name in ("hold", "stall"):
            continue
        for r in rs:
            g = r["gateway"]
            errors["non_2xx"] += g.get("non_2xx", 0) + g.get("non_200", 0)
            errors["failed"] += g.get("failed", 0)
            errors["stream_problems"] += g.get("without_done", 0) + (1 if g.get("error_events") else 0)
    s["gateway_errors"] = errors
    s["cpu_ms_per_request_c64"] = median([get(r["gateway"], "cpu_ms_per_request") for r in rounds_of(b, "rps_c64")])
    s["cpu_ms_per_request_c1"] = median([get(r["gateway"], "cpu_ms_per_request") for r in rounds_of(b, "latency_c1")])
    s["cpu_us_per_event"] = median([get(r["gateway"], "cpu_us_per_event") for r in rounds_of(b, "sse_c4")])
    c64 = [r["gateway"].get("proc", {}) for r in rounds_of(b, "rps_c64")]
    s["cpu_share_c64"] = median([p["cpu_seconds"] / p["seconds"] for p in c64 if p.get("seconds")])
    s["core0_busy_c64"] = median([get(p, "core_busy_share.cpu0") for p in c64])
    s["core1_busy_c64"] = median([get(p, "core_busy_share.cpu1") for p in c64])
    hold = b["scenarios"].get("hold", {})
    s["hold"] = {
        "streams": hold.get("streams_requested"),
        "with_first_event": hold.get("streams_with_first_event"),
        "rss_kib_all_open": hold.get("rss_kib_all_open"),
        "rss_kib_after_hold": hold.get("rss_kib_after_hold"),
        "rss_kib_after_close": get(hold, "proc.rss_kib_end"),
        "hwm_kib": get(hold, "proc.hwm_kib_end"),
        "seconds_to_open_all": hold.get("seconds_to_open_all"),
        "ttfd_p50_ms": get(hold, "ttfd.p50_ms"),
        "ttfd_p99_ms": get(hold, "ttfd.p99_ms"),
        "failures": hold.get("failures"),
    }
    stall = b["scenarios"].get("stall", {})
    s["stall"] = {
        who: {
            "p50_ms": get(stall, f"{who}.latency.latency.p50_ms"),
            "p99_ms": get(stall, f"{who}.latency.latency.p99_ms"),
            "answers": get(stall, f"{who}.flood.answers"),
        }
        for who in ("empty_wallet", "funded")
    }
    s["rss_kib_after_stall"] = b.get("rss_kib_after_stall")
    s["rss_kib_idle_after_start"] = b.get("rss_kib_idle_after_start")
    s["rss_kib_before_hold"] = b.get("rss_kib_before_hold")
    return s


def fmt(x: Any, nd: int = 0, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and nd:
        return f"{x:,.{nd}f}{unit}"
    return f"{round(x):,}{unit}" if isinstance(x, (int, float)) else str(x)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def table(results: dict) -> str:
    names = [b["backend"] for b in results["backends"]]
    sums = {b["backend"]: b["summary"] for b in results["backends"]}
    label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    head = (
        "| metric | "
        + " | ".join(f"{label.get(n, n)}: direct | {label.get(n, n)}: Omixa | Omixa vs direct" for n in names)
        + " | target | "
        + " / ".join(label.get(n, n) for n in names)
        + " |"
    )
    sep = "|" + "---|" * (2 + 3 * len(names) + 1)
    rows = [head, sep]

    def row(metric: str, cells: list[tuple[str, str, str]], target: str, oks: list[bool | None]) -> None:
        body = " | ".join(" | ".join(c) for c in cells)
        rows.append(f"| {metric} | {body} | {target} | {' / '.join(verdict(o) for o in oks)} |")

    def ratio_row(metric: str, key: str, target: str, test: Any, nd: int = 0) -> None:
        cells, oks = [], []
        for n in names:
            e = sums[n].get(key, {})
            cells.append(
                (
                    fmt(e.get("direct"), nd),
                    fmt(e.get("gateway"), nd),
                    f"×{e['ratio']:.3f}" if e.get("ratio") is not None else "n/a",
                )
            )
            oks.append(test(e) if test and e.get("gateway") is not None else None)
        row(metric, cells, target, oks)

    def diff_row(metric: str, key: str, target: str, test: Any) -> None:
        cells, oks = [], []
        for n in names:
            e = sums[n].get(key, {})
            cells.append(
                (
                    fmt(e.get("direct"), 3),
                    fmt(e.get("gateway"), 3),
                    f"+{e['added']:.3f} ms" if e.get("added") is not None else "n/a",
                )
            )
            oks.append(test(e) if test and e.get("added") is not None else None)
        row(metric, cells, target, oks)

    ratio_row("non-streaming req/s, c32", "rps_c32.rps", "—", None)
    diff_row("  latency p50 at c32 (ms)", "rps_c32.latency.p50_ms", "—", None)
    ratio_row("non-streaming req/s, c64", "rps_c64.rps", "≥ 500 req/s", lambda e: e["gateway"] >= 500)
    diff_row("  latency p50 at c64 (ms)", "rps_c64.latency.p50_ms", "—", None)
    diff_row("  latency p99 at c64 (ms)", "rps_c64.latency.p99_ms", "—", None)
    diff_row("latency p50, one connection (ms)", "latency_c1.latency.p50_ms", "≤ +1.5 ms", lambda e: e["added"] <= 1.5)
    diff_row("latency p99, one connection (ms)", "latency_c1.latency.p99_ms", "≤ +4 ms", lambda e: e["added"] <= 4.0)
    ratio_row(
        "SSE data events/s, 4 streams × 2,000 events",
        "sse_c4.events_per_s",
        "≥ 10,000 ev/s",
        lambda e: e["gateway"] >= 10000,
    )
    diff_row(
        "time to first byte p50, one connection (ms)", "ttfb_c1.ttfb.p50_ms", "≤ +3 ms", lambda e: e["added"] <= 3.0
    )
    diff_row("  time to first byte p99 (ms)", "ttfb_c1.ttfb.p99_ms", "—", None)
    diff_row("time to first data event p50, one connection (ms)", "ttfb_c1.ttfd.p50_ms", "—", None)
    diff_row("  time to first data event p99 (ms)", "ttfb_c1.ttfd.p99_ms", "—", None)

    def single(metric: str, getter: Any, target: str, test: Any, unit: str = "", nd: int = 0) -> None:
        cells, oks = [], []
        for n in names:
            v = getter(sums[n])
            cells.append(("—", fmt(v, nd, unit), "—"))
            oks.append(test(v) if test and v is not None else None)
        row(metric, cells, target, oks)

    for who, words in (("empty_wallet", "an empty wallet"), ("funded", "a funded key")):
        single(
            f"one-connection latency p50 / p99 (ms) while 2 connections send 4 MB prompts from {words}",
            lambda s, who=who: f"{fmt(s['stall'][who].get('p50_ms'), 3)} / {fmt(s['stall'][who].get('p99_ms'), 3)}",
            "—", None,
        )  # fmt: skip
        single("  the flood's answers", lambda s, who=who: s["stall"][who].get("answers"), "—", None)
    single(
        "  Omixa RSS after both floods (MB)",
        lambda s: None if s.get("rss_kib_after_stall") is None else s["rss_kib_after_stall"] / 1024,
        "—",
        None,
        "",
        1,
    )
    single("Omixa CPU per request at c64 (ms)", lambda s: s.get("cpu_ms_per_request_c64"), "—", None, "", 2)
    single("Omixa CPU per request at c1 (ms)", lambda s: s.get("cpu_ms_per_request_c1"), "—", None, "", 2)
    single(
        "Omixa CPU share of one core during c64 (core 0 / core 1 busy)",
        lambda s: (
            f"{fmt(s.get('cpu_share_c64'), 2)} ({fmt(s.get('core0_busy_c64'), 2)} / {fmt(s.get('core1_busy_c64'), 2)})"
        ),
        "—",
        None,
    )
    single("Omixa CPU per relayed event (µs)", lambda s: s.get("cpu_us_per_event"), "—", None, "", 1)
    mb = lambda kib: None if kib is None else kib / 1024  # noqa: E731
    single("Omixa RSS after start-up (MB)", lambda s: mb(s.get("rss_kib_idle_after_start")), "—", None, "", 1)
    single("Omixa RSS after the load scenarios (MB)", lambda s: mb(s.get("rss_kib_before_hold")), "—", None, "", 1)
    single(
        "Omixa RSS with N concurrent slow streams open (MB)",
        lambda s: mb(s["hold"].get("rss_kib_all_open")),
        "≤ 150 MB (N = 1,000)",
        lambda v: v <= 150,
        "",
        1,
    )
    single(
        "  streams open / requested",
        lambda s: f"{s['hold'].get('with_first_event')}/{s['hold'].get('streams')}",
        "—",
        None,
    )
    single("  seconds to open them all", lambda s: s["hold"].get("seconds_to_open_all"), "—", None, "", 1)
    single(
        "  time to first data event p50 / p99 (ms)",
        lambda s: f"{fmt(s['hold'].get('ttfd_p50_ms'), 1)} / {fmt(s['hold'].get('ttfd_p99_ms'), 1)}",
        "—",
        None,
    )
    single(
        "Omixa errors: non-2xx / failed requests / bad streams",
        lambda s: "{non_2xx} / {failed} / {stream_problems}".format(**s["gateway_errors"]),
        "0",
        None,
    )
    return "\n".join(rows)


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = {}
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


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# Omixa benchmark, {results['started']} ({results['mode']} run)",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, Linux {m['kernel']}. "
        f"Omixa at {m['git'].get('commit')}"
        + (
            f" with {len(m['git'].get('uncommitted_project_files', []))} uncommitted project files"
            if m["git"].get("uncommitted_project_files")
            else ""
        )
        + f". Pinning: {results['pinning']}. Rounds per scenario: {results['params']['rounds']} (medians; "
        "ratios and differences are per round, then the median). Streaming read size "
        f"(chunk_bytes): {results['params'].get('chunk_bytes') or '128, the default'}.",
        "",
        table(results),
        "",
        reference_table(results),
    ]
    for b in results["backends"]:
        lines.append(f"## {b['backend']}: checks")
        lines.append("")
        lines.append(
            f"- shutdown: {b.get('shutdown')}; ledger verify: {b.get('ledger_verify', {}).get('exit')} ({b.get('ledger_verify', {}).get('stderr', '')[-200:]})"
        )
        lg = b.get("log", {})
        lines.append(f"- log lines by level: {lg.get('lines_by_level')}; request statuses: {lg.get('request_status')}")
        lines.append(f"- database: {b.get('db_counts')}")
        if lg.get("warning_samples"):
            lines.append("- first warnings/errors in the log:")
            lines.extend(f"    - `{s}`" for s in lg["warning_samples"][:8])
        if b["problems"]:
            lines.append("- **problems:**")
            lines.extend(f"    - {p}" for p in b["problems"])
        else:
            lines.append("- problems: none")
        lines.append("")
    if results.get("problems"):
        lines.append("## Run problems")
        lines.extend(f"- {p}" for p in results["problems"])
    return "\n".join(lines) + "\n"


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
        out["rss_kib_idle_after_start"] = _rss(proc.pid)
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


def reference_table(results: dict) -> str:
    ref = results.get("reference")
    if not ref:
        return ""
    s = ref["summary"]
    names = [b["backend"] for b in results["backends"]]
    head = "| metric | minimal relay | " + " | ".join(f"Omixa, {n}" for n in names) + " |"
    lines = [
        "## The reference: a minimal Quart-Trio relay on the same run",
        "",
        "`bench/reference_relay.py`: the same stack on the same core, with no auth, billing, "
        "routing or logging. Its figures are the ceiling the targets are set against; Omixa's "
        "are repeated from the table above.",
        "",
        head,
        "|" + "---|" * (2 + len(names)),
    ]

    def row(metric: str, pick: Any, nd: int, unit: str = "") -> None:
        sums = [s] + [b.get("summary", {}) for b in results["backends"]]
        lines.append(f"| {metric} | " + " | ".join(fmt(pick(x), nd, unit) for x in sums) + " |")

    row("non-streaming req/s, c64", lambda x: (x.get("rps_c64.rps") or {}).get("gateway"), 0)
    row("CPU per request at c64 (ms)", lambda x: x.get("cpu_ms_per_request_c64"), 2)
    row(
        "added latency p50, one connection", lambda x: (x.get("latency_c1.latency.p50_ms") or {}).get("added"), 3, " ms"
    )
    row(
        "added latency p99, one connection", lambda x: (x.get("latency_c1.latency.p99_ms") or {}).get("added"), 3, " ms"
    )
    row("SSE data events/s, 4 streams", lambda x: (x.get("sse_c4.events_per_s") or {}).get("gateway"), 0)
    row("CPU per relayed event (µs)", lambda x: x.get("cpu_us_per_event"), 1)
    row("RSS after start-up (MB)", lambda x: (x.get("rss_kib_idle_after_start") or 0) / 1024 or None, 1)
    if ref["problems"]:
        lines.append("")
        lines.extend(f"- problem: {p}" for p in ref["problems"])
    return "\n".join(lines) + "\n"


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
