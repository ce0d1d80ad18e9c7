#!/usr/bin/env python3
"""A fast fake Azure OpenAI chat-completions upstream for the benchmarks.

No web framework: a minimal HTTP/1.1 server on plain asyncio protocols, run as several
processes, each with its own listening socket on one shared port (SO_REUSEPORT, so the
kernel spreads connections over the workers). Keep-alive, Content-Length request bodies.
Every response is precomputed bytes; per request the server only finds the header end,
the Content-Length and three small patterns in the body.

    POST /openai/deployments/{name}/chat/completions?api-version=...    (api-key: anything)

- non-streaming: a fixed Azure ``chat.completion`` JSON with ``usage``;
- ``"stream": true``: ``text/event-stream``, chunked, in Azure's framing: a filter-only frame
  (empty ``choices`` + ``prompt_filter_results``), a role frame, N content frames
  (``chat.completion.chunk`` with ``content_filter_results``), a finish frame, a usage frame
  (empty ``choices``) when ``stream_options.include_usage`` is true, ``data: [DONE]``.
  Each frame is one HTTP chunk. N is ``--events``, or the request's ``max_tokens`` /
  ``max_completion_tokens`` when smaller (one token per content frame, as a real model
  stops at its cap); ``completion_tokens`` in the usage frame is N.

Knobs: ``--port`` (0 picks one), ``--workers``, ``--events``, ``--event-interval-ms`` (0:
the whole stream is written at once, as fast as the socket takes it), ``--first-token-ms``
(delay before the first content frame, or before a non-streaming answer), ``--filter-every K``
(content frames carry the full four-category ``content_filter_results``, ~465 bytes, on every
K-th frame and ``{}``, ~285 bytes, on the others; the default 4 averages ~325 bytes a frame).

When every worker listens it prints ``UPSTREAM_PORT=NNNN`` on stdout. SIGINT/SIGTERM stop
it; workers also exit when the parent goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sys
import time

from upstream_payloads import (
    COMPLETION_RESPONSE,
    DONE_CHUNK,
    ERR_400_VERSION,
    ERR_401,
    ERR_404,
    ERR_411,
    FILTER_CHUNK,
    FINISH_LENGTH,
    FINISH_STOP,
    ROLE_CHUNK,
    STREAM_HEAD,
    Knobs,
    usage_chunk,
)

_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')
_CAP_RE = re.compile(rb'"max(?:_completion)?_tokens"\s*:\s*(\d+)')
_CL_RE = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
_KEY_RE = re.compile(rb"\r\napi-key:[ \t]*\S")


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------
class Conn(asyncio.Protocol):
    __slots__ = ("knobs", "transport", "buf", "busy", "closed", "paused", "_drain")

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # a delayed/slow response is being written: hold later requests
        self.closed = False
        self.paused = False
        self._drain: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if self.paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        buf = self.buf
        while not self.busy and not self.closed:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    assert self.transport is not None  # bytes arrive only after connection_made
                    self.transport.close()
                return
            head = bytes(buf[:end]).lower()
            match = _CL_RE.search(head)
            length = int(match.group(1)) if match else 0
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self.handle(head, body, has_length=match is not None)

    def handle(self, head: bytes, body: bytes, *, has_length: bool) -> None:
        line_end = head.find(b"\r\n")
        request_line = head[:line_end] if line_end >= 0 else head
        parts = request_line.split(b" ")
        t = self.transport
        assert t is not None  # requests arrive only after connection_made
        if len(parts) != 3 or parts[0] != b"post":
            t.write(ERR_404)
            return
        target = parts[1]
        path, _, query = target.partition(b"?")
        if not (path.startswith(b"/openai/deployments/") and path.endswith(b"/chat/completions")):
            t.write(ERR_404)
            return
        if b"api-version=" not in query:
            t.write(ERR_400_VERSION)
            return
        if not _KEY_RE.search(head):
            t.write(ERR_401)
            return
        if not has_length:
            t.write(ERR_411)
            t.close()
            return
        knobs = self.knobs
        if not _STREAM_RE.search(body):
            if knobs.first_token > 0:
                self.busy = True
                asyncio.get_running_loop().call_later(knobs.first_token, self._late_complete)
            else:
                t.write(COMPLETION_RESPONSE)
            return
        n = knobs.events
        cap = _CAP_RE.search(body)
        if cap is not None:
            n = max(1, min(n, int(cap.group(1))))
        usage = _USAGE_RE.search(body) is not None
        t.write(STREAM_HEAD + FILTER_CHUNK)
        if knobs.interval <= 0 and knobs.first_token <= 0:
            t.write(knobs.stream_body(n, usage))
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._slow_stream(n, usage))

    def _late_complete(self) -> None:
        if not self.closed:
            assert self.transport is not None  # set by connection_made, before the request
            self.transport.write(COMPLETION_RESPONSE)
        self._release()

    def _release(self) -> None:
        self.busy = False
        if not self.closed and self.buf:
            self.process()

    async def _slow_stream(self, n: int, usage: bool) -> None:
        knobs = self.knobs
        t = self.transport
        assert t is not None  # set by connection_made, before the request
        try:
            if knobs.first_token > 0:
                await asyncio.sleep(knobs.first_token)
            if knobs.interval <= 0:
                if not self.closed:
                    t.write(knobs.stream_body(n, usage))
                return
            if self.closed:
                return
            t.write(ROLE_CHUNK)
            chunks = knobs.content_chunks
            k = len(chunks)
            for i in range(n):
                if i:
                    await asyncio.sleep(knobs.interval)
                if self.closed:
                    return
                t.write(chunks[i % k])
                await self.drain()
            tail = (
                (FINISH_LENGTH if n < knobs.events else FINISH_STOP) + (usage_chunk(n) if usage else b"") + DONE_CHUNK
            )
            if not self.closed:
                t.write(tail)
        finally:
            self._release()


def make_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker(host: str, port: int, knobs: Knobs, ready_w: int, parent_r: int) -> None:
    """One worker process: its own listening socket on the shared port."""
    sock = make_socket(host, port)
    sock.listen(4096)
    sock.setblocking(False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()

        def finish() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, finish)
        # The parent holds the write end of this pipe: EOF means it is gone.
        loop.add_reader(parent_r, finish)
        server = await loop.create_server(lambda: Conn(knobs), sock=sock, backlog=4096)
        os.write(ready_w, b"r")
        os.close(ready_w)
        await stop
        server.close()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--events", type=int, default=2000, help="content frames per stream")
    p.add_argument("--event-interval-ms", type=float, default=0.0, help="0: as fast as possible")
    p.add_argument("--first-token-ms", type=float, default=0.0)
    p.add_argument(
        "--filter-every",
        type=int,
        default=4,
        help="full content_filter_results on every K-th content frame, {} on the others (1: on every frame)",
    )
    args = p.parse_args(argv)
    knobs = Knobs(args.events, args.event_interval_ms / 1000, args.first_token_ms / 1000, args.filter_every)
    for n in (args.events,):  # warm the cache of the common stream bodies before forking
        knobs.stream_body(n, True)
        knobs.stream_body(n, False)

    # Reserve the port: a bound, non-listening SO_REUSEPORT socket takes no connections.
    reserve = make_socket(args.host, args.port)
    port = reserve.getsockname()[1]
    ready_r, ready_w = os.pipe()
    parent_r, parent_w = os.pipe()
    children: list[int] = []
    for _ in range(max(1, args.workers)):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(parent_w)
            code = 0
            try:
                worker(args.host, port, knobs, ready_w, parent_r)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        children.append(pid)
    os.close(ready_w)
    os.close(parent_r)
    got = b""
    while len(got) < len(children):
        part = os.read(ready_r, 64)
        if not part:
            print("upstream: a worker failed to start", file=sys.stderr)
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            return 1
        got += part
    reserve.close()
    print(f"UPSTREAM_PORT={port}", flush=True)
    print(
        f"upstream: {len(children)} workers on {args.host}:{port}, events={args.events}, "
        f"interval={args.event_interval_ms}ms, first-token={args.first_token_ms}ms, "
        f"content frames {knobs.mean_frame_bytes:.0f} bytes on average",
        file=sys.stderr,
        flush=True,
    )

    class Stop(Exception):
        pass

    def on_signal(signum: int, frame: object) -> None:
        raise Stop

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    alive = set(children)
    try:
        while alive:
            try:
                pid, _ = os.waitpid(-1, 0)
                alive.discard(pid)
            except ChildProcessError:
                break
    except Stop:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.close(parent_w)  # workers see EOF and stop
    deadline = time.monotonic() + 5
    for pid in list(alive):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            alive.discard(pid)
    while alive and time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
        else:
            alive.discard(pid)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
