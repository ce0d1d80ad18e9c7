"""The load generator's measurements: CPU time and memory of a process and busy time of
every core (from /proc) over a window, and latency percentiles."""

from __future__ import annotations

import os
import statistics
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
now = time.perf_counter


# ---------------------------------------------------------------------------------------
# process stats
# ---------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def core_busy_seconds() -> dict[str, float]:
    """Busy (non-idle, non-iowait) seconds of every core, from /proc/stat."""
    out: dict[str, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                out[name] = (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    return out


class ProcWatch:
    """CPU time and memory of one process (CPU also of ``also``, other processes of the same
    service, e.g. a supervisor's workers), and busy time of every core, over a window."""

    def __init__(self, pid: int | None, also: tuple[int, ...] = ()) -> None:
        self.pid = pid
        self.also = also
        self.cpu0 = self.cpu1 = 0.0
        self.t0 = self.t1 = 0.0
        self.cores0: dict[str, float] = {}
        self.cores1: dict[str, float] = {}
        self.mem0: dict[str, int] = {}
        self.mem1: dict[str, int] = {}

    def _cpu(self) -> float:
        assert self.pid is not None
        return cpu_seconds(self.pid) + sum(cpu_seconds(pid) for pid in self.also)

    def start(self) -> None:
        if self.pid:
            self.t0 = now()
            self.cpu0 = self._cpu()
            self.mem0 = mem_kib(self.pid)
            self.cores0 = core_busy_seconds()

    def stop(self) -> None:
        if self.pid:
            self.t1 = now()
            self.cpu1 = self._cpu()
            self.mem1 = mem_kib(self.pid)
            self.cores1 = core_busy_seconds()

    def report(self) -> dict:
        if not self.pid:
            return {}
        span = max(1e-9, self.t1 - self.t0)
        return {
            "pid": self.pid,
            "seconds": round(span, 3),
            "cpu_seconds": round(self.cpu1 - self.cpu0, 4),
            "core_busy_share": {k: round((self.cores1.get(k, 0) - v) / span, 3) for k, v in self.cores0.items()},
            "rss_kib_start": self.mem0.get("VmRSS"),
            "rss_kib_end": self.mem1.get("VmRSS"),
            "hwm_kib_end": self.mem1.get("VmHWM"),
        }


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    i = min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))
    return values[i]


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


def lat_summary(values: list[float]) -> dict:
    return {
        "p50_ms": ms(pct(values, 50)),
        "p90_ms": ms(pct(values, 90)),
        "p99_ms": ms(pct(values, 99)),
        "mean_ms": ms(statistics.fmean(values)) if values else None,
        "max_ms": ms(max(values)) if values else None,
        "n": len(values),
    }
