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
process are read at the start and the end of the measured window.

The target is ``--url http://HOST:PORT/path``; ``--auth-header`` is sent as is (e.g.
``"Authorization: Bearer omx_..."`` or ``"api-key: x"``). Every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from urllib.parse import urlsplit

CLK_TCK = os.sysconf("SC_CLK_TCK")
now = time.perf_counter

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a haiku about the sea, please."},
]

_PAT_DATA = b"\n\ndata:"
_PAT_DONE = b"\n\ndata: [DONE]"
_PAT_ERROR = b'\n\ndata: {"error"'
_TAIL = 16  # longer than every pattern


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
    """CPU time and memory of one process, and busy time of every core, over a window."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu0 = self.cpu1 = 0.0
        self.t0 = self.t1 = 0.0
        self.cores0: dict[str, float] = {}
        self.cores1: dict[str, float] = {}
        self.mem0: dict[str, int] = {}
        self.mem1: dict[str, int] = {}

    def start(self) -> None:
        if self.pid:
            self.t0 = now()
            self.cpu0 = cpu_seconds(self.pid)
            self.mem0 = mem_kib(self.pid)
            self.cores0 = core_busy_seconds()

    def stop(self) -> None:
        if self.pid:
            self.t1 = now()
            self.cpu1 = cpu_seconds(self.pid)
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


# ---------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------
class Target:
    def __init__(self, url: str, auth_header: str, body: dict) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"{auth_header}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: */*\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.request = head.encode() + payload


class Result:
    """One response, as seen by the client."""

    __slots__ = (
        "t_sent", "t_first_byte", "t_first_data", "t_done", "status", "events",
        "events_in_window", "done_marker", "error_events", "failed",
    )  # fmt: skip

    def __init__(self, t_sent: float) -> None:
        self.t_sent = t_sent
        self.t_first_byte = 0.0
        self.t_first_data = 0.0
        self.t_done = 0.0
        self.status = 0
        self.events = 0  # data: events (the [DONE] marker excluded)
        self.events_in_window = 0
        self.done_marker = False
        self.error_events = 0
        self.failed = ""  # connection-level failure reason


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.lost = loop.create_future()
        self.waiter: asyncio.Future | None = None
        self.result: Result | None = None
        self.window_start = 0.0  # events are counted in the window only between these
        self.window_end = float("inf")
        self.first_data_waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.state = (
            0  # 0 head, 1 content-length body, 2 chunk size, 3 chunk data, 4 chunk CRLF, 5 trailers, 6 until close
        )
        self.remaining = 0
        self.tail = b"\n\n"
        self.keep_alive = True

    # --- asyncio callbacks ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.state == 6 and self.result is not None:
            self._complete()
        else:
            self._fail("connection closed" if exc is None else f"connection lost: {exc!r}")

    def data_received(self, data: bytes) -> None:
        r = self.result
        if r is None:
            return  # unsolicited bytes; ignored
        if not r.t_first_byte:
            r.t_first_byte = now()
        self.buf += data
        try:
            self._parse()
        except ValueError as exc:
            self._fail(f"bad response: {exc}")
            if self.transport is not None:
                self.transport.close()

    # --- requests ---
    def send(self, request: bytes) -> asyncio.Future:
        self.result = Result(now())
        self._reset()
        self.waiter = self.loop.create_future()
        self.transport.write(request)
        return self.waiter

    def _fail(self, reason: str) -> None:
        r = self.result
        if r is not None and self.waiter is not None and not self.waiter.done():
            r.failed = reason
            r.t_done = now()
            self.waiter.set_result(r)
        if self.first_data_waiter is not None and not self.first_data_waiter.done():
            self.first_data_waiter.set_result(None)
        self.result = None

    def _complete(self) -> None:
        r = self.result
        self.result = None
        r.t_done = now()
        r.done_marker = _PAT_DONE in self.tail
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(r)
        if self.first_data_waiter is not None and not self.first_data_waiter.done():
            self.first_data_waiter.set_result(None)
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def _body(self, data: bytes | bytearray) -> None:
        """Count SSE events in a piece of decoded body."""
        s = self.tail + data
        k = len(self.tail)
        n = s.count(_PAT_DATA, max(0, k - len(_PAT_DATA) + 1))
        if n:
            r = self.result
            done = s.count(_PAT_DONE, max(0, k - len(_PAT_DONE) + 1))
            errors = s.count(_PAT_ERROR, max(0, k - len(_PAT_ERROR) + 1))
            n -= done
            r.error_events += errors
            if n > 0:
                if not r.events:
                    r.t_first_data = now()
                    if self.first_data_waiter is not None and not self.first_data_waiter.done():
                        self.first_data_waiter.set_result(None)
                r.events += n
                if self.window_start <= now() < self.window_end:
                    r.events_in_window += n
        self.tail = s[-_TAIL:]

    def _parse(self) -> None:
        buf = self.buf
        while self.result is not None:
            st = self.state
            if st == 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        raise ValueError("response head too large")
                    return
                head = bytes(buf[:end]).decode("latin-1")
                del buf[: end + 4]
                lines = head.split("\r\n")
                status_line = lines[0].split(" ", 2)
                if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
                    raise ValueError(f"bad status line {lines[0]!r}")
                self.result.status = int(status_line[1])
                length = None
                chunked = False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value.strip())
                    elif name == "transfer-encoding" and "chunked" in value.lower():
                        chunked = True
                    elif name == "connection" and "close" in value.lower():
                        self.keep_alive = False
                if status_line[0] == "HTTP/1.0":
                    self.keep_alive = False
                if chunked:
                    self.state = 2
                elif length is not None:
                    self.state, self.remaining = 1, length
                    if length == 0:
                        self._complete()
                        return
                else:
                    self.state, self.keep_alive = 6, False
            elif st == 1:
                if not buf:
                    return
                take = min(len(buf), self.remaining)
                self._body(buf[:take])
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self._complete()
                    return
            elif st == 2:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ValueError("bad chunk size line")
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                del buf[: end + 2]
                if size == 0:
                    self.state = 5
                else:
                    self.state, self.remaining = 3, size
            elif st == 3:
                if not buf:
                    return
                take = min(len(buf), self.remaining)
                if take == len(buf):
                    self._body(bytes(buf))
                    buf.clear()
                else:
                    self._body(buf[:take])
                    del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = 4
            elif st == 4:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("missing CRLF after chunk")
                del buf[:2]
                self.state = 2
            elif st == 5:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:  # the blank line ending the trailers
                    self._complete()
                    return
            else:  # 6: body until close
                if buf:
                    self._body(bytes(buf))
                    buf.clear()
                return


async def connect(target: Target) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(loop), target.host, target.port)
    return conn


class Stats:
    def __init__(self) -> None:
        self.results: list[Result] = []
        self.connections = 0
        self.failures: dict[str, int] = {}

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


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


async def one_request(conn: Conn, target: Target, timeout: float) -> Result:
    fut = conn.send(target.request)
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except TimeoutError:
        r = conn.result or Result(now())
        conn._fail("timeout")
        conn.transport.close()
        r.failed = r.failed or "timeout"
        return r


async def worker_loop(
    target: Target,
    stats: Stats,
    *,
    t_end: float,
    hard_end: float,
    timeout: float,
    window: tuple[float, float] = (0.0, float("inf")),
    count: int | None = None,
) -> None:
    """Send requests back to back on one connection (reconnecting after failures) until
    ``t_end`` (no new request after it) or ``count`` requests, recording every one.
    Stream events are counted in ``events_in_window`` when they arrive inside ``window``."""
    conn: Conn | None = None
    sent = 0
    while now() < t_end and (count is None or sent < count):
        if conn is None or conn.transport is None or conn.transport.is_closing():
            try:
                conn = await asyncio.wait_for(connect(target), max(0.1, hard_end - now()))
                stats.connections += 1
            except (TimeoutError, OSError) as exc:
                stats.fail(f"connect: {type(exc).__name__}")
                await asyncio.sleep(0.05)
                continue
        conn.window_start, conn.window_end = window
        r = await one_request(conn, target, min(timeout, max(0.1, hard_end - now())))
        sent += 1
        stats.results.append(r)
        if r.failed:
            stats.fail(r.failed)
            if conn.transport is not None:
                conn.transport.close()
            conn = None
    if conn is not None and conn.transport is not None:
        conn.transport.close()


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
    out = {
        "mode": "rps",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "requests": len(done),
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
    out = {
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
    out = {
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
    args = p.parse_args(argv)

    body: dict = {"model": args.model, "messages": PROMPT}
    if args.mode in ("sse", "ttfb", "hold"):
        body["stream"] = True
        if args.include_usage:
            body["stream_options"] = {"include_usage": True}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    target = Target(args.url, args.auth_header, body)
    watch = ProcWatch(args.pid)
    result = asyncio.run(MODES[args.mode](args, target, watch))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
