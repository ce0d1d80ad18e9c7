"""The run's figures: Omixa's log counted by level and request status, medians over rounds
per backend, and the markdown summary (the comparison table, the reference relay's table,
each backend's checks)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


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


# ---------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------
def rounds_of(b: dict, name: str) -> list[dict]:
    return [r for r in b["scenarios"].get(name, []) if "error" not in r["direct"] and "error" not in r["gateway"]]


def get(d: dict, path: str) -> Any:
    node: Any = d
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


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
