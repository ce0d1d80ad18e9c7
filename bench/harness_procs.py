"""The harness's processes: the fake upstreams, the load generator and the ``omixa`` CLI,
each run as a child process (see bench/README.md), and the constants they share."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
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
DIRECT_AUTH = f"api-key: {UPSTREAM_KEY}"  # the load generator's header when it calls the upstream itself


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
    assert proc.stdout is not None, "started with stdout=subprocess.PIPE"
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        if proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode} before printing {prefix}")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:  # end of file: the process closed its output (or exited)
            if proc.wait(timeout=max(0.0, deadline - time.monotonic())) is not None:
                raise BenchError(f"{proc.args!r} exited with {proc.returncode} before printing {prefix}")
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
        d = load(mode, fast.url(MODEL_FAST), DIRECT_AUTH, limit=limit, **direct_opts)
        g = load(mode, url, auth, limit=limit, pid=pid, **gw_opts)
        out.append({"direct": d, "gateway": g})
        for side, res in (("direct", d), ("gateway", g)):
            if "error" in res:
                problems.append(f"{label} round {r + 1} {side}: {res['error']}: {res.get('stderr', '')[-300:]}")
        log(f"{label} round {r + 1}: direct {brief(d)} | gateway {brief(g)}")
    return out


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


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
