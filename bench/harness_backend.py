"""One backend's run: its config, its account and keys (made with the ``omixa`` CLI), the
``omixa serve`` process, the scenarios against it, and the checks after it stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness_procs import (
    API_VERSION,
    BENCH,
    DIRECT_AUTH,
    MODEL_FAST,
    MODEL_SLOW,
    OMIXA,
    PG_ADMIN,
    PG_URL,
    POOL_SIZE,
    PY,
    UPSTREAM_KEY,
    BenchError,
    Load,
    Upstream,
    brief,
    interleaved,
    log,
    pinned,
    read_line_with,
    rss_kib,
    run_cli,
    stop,
    values,
)
from harness_summary import scan_log

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
        self.result["rss_kib_idle_after_start"] = rss_kib(self.pid)
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

    direct_auth = DIRECT_AUTH

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
        self.result["rss_kib_after_stall"] = rss_kib(self.pid)

    def hold(self) -> None:
        p = self.p
        self.result["rss_kib_before_hold"] = rss_kib(self.pid)
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
            self.result["rss_kib_before_shutdown"] = rss_kib(self.pid)
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
