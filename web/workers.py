"""``omixa serve --workers N``: N gateway processes behind one listening socket, supervised.

The supervisor binds the port once and starts N workers (``omixa serve`` with the listening
socket's file descriptor inherited); the kernel hands each new connection to whichever
worker accepts it first, so an idle worker takes more. Each worker is a whole gateway (its
own engine, actors, connection pools and database connections) and a process of its own in
the ``instances`` table.

- A worker that dies is started again (after 0.5 s, doubling up to 10 s while it keeps
  dying within 30 s of its start); the holds it left are released by the other workers'
  instance monitors (its pid is gone). A worker that fails before it ever served stops the
  supervisor: its error is on stderr, and restarting would only repeat it.
- SIGINT or SIGTERM: every worker gets SIGTERM and drains as one ``omixa serve`` does; the
  supervisor returns once all have exited. SIGHUP is passed on (each worker reloads its
  ``[[deployments]]``).
- Without ``OMIXA_SESSION_SECRET``, the supervisor draws one for all its workers, so a
  dashboard session works whichever worker a request reaches.
- Metrics (``[metrics] enabled``): the supervisor makes an empty folder for prometheus-client's
  multiprocess mode and names it to the workers (``PROMETHEUS_MULTIPROC_DIR``), so whichever
  worker answers ``GET /metrics`` reports the sum of all; a dead worker's live gauges are
  dropped before it is started again; the supervisor serves ``[metrics] bind`` itself, from
  the same folder, and removes the folder when it stops.
- Workers run in their own session, so a terminal's Ctrl-C reaches the supervisor only (and
  each worker once, from it); a worker whose supervisor died (SIGKILL) shuts down as on
  SIGTERM within :data:`ORPHAN_CHECK_SECONDS`.

Limits: with ``[cluster] redis_url`` the workers count every limit together in Redis. Without,
worker ``i`` of ``N`` admits its share of every deployment's and key's limit (they add up to
the limit; a busy worker may refuse while another has room), and a signed request with a
nonce is remembered by the worker that saw it only. This is logged at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import trio

from omixa.engine.config import Config
from omixa.engine.metrics import exposition_registry, mark_process_dead, serving
from omixa.web.server import wait_for_signal

log = logging.getLogger("omixa.workers")

BACKLOG = 1024
RESTART_MIN, RESTART_MAX = 0.5, 10.0
# A worker that ran this long before dying restarts after RESTART_MIN again.
STABLE_SECONDS = 30.0
# Bound on a worker's start (the tokenizers load, storage migrates).
START_TIMEOUT = 120.0
# How often a worker checks that its supervisor is still its parent.
ORPHAN_CHECK_SECONDS = 1.0


async def signal_or_orphaned() -> None:
    """A worker's shutdown trigger: SIGINT/SIGTERM, or its supervisor gone (the worker was
    handed to another parent)."""
    parent = os.getppid()
    async with trio.open_nursery() as nursery:

        async def orphaned() -> None:
            while True:
                await trio.sleep(ORPHAN_CHECK_SECONDS)
                if os.getppid() != parent:
                    break
            log.warning("the supervisor (pid %d) is gone: shutting down", parent)
            nursery.cancel_scope.cancel()

        nursery.start_soon(orphaned)
        await wait_for_signal()
        nursery.cancel_scope.cancel()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening, inheritable by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    sock.set_inheritable(True)
    return sock


def root_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def worker_argv(serve_args: Sequence[str], index: int, count: int, fd: int) -> list[str]:
    """The command that starts worker ``index``: ``omixa serve`` with the same arguments."""
    return [sys.executable, "-m", "omixa.web.cli", "serve", *serve_args, "--worker", f"{index}/{count}/{fd}"]


class Supervisor:
    def __init__(self, config: Config, serve_args: Sequence[str], count: int, sock: socket.socket) -> None:
        self._config = config
        self._serve_args = list(serve_args)
        self._count = count
        self._sock = sock
        self._processes: dict[int, trio.Process] = {}
        self._stopping = False
        self.restarts = 0
        self._env = dict(os.environ)
        self._metrics_dir: str | None = None
        self.metrics_url: str | None = None  # the [metrics] bind listener, once serving
        if config.metrics.enabled:
            self._metrics_dir = tempfile.mkdtemp(prefix="omixa-metrics-")
            self._env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        if not self._env.get("OMIXA_SESSION_SECRET"):
            # A dashboard session signed by one worker must be valid in every other.
            self._env["OMIXA_SESSION_SECRET"] = secrets.token_urlsafe(32)
            log.warning(
                "OMIXA_SESSION_SECRET is not set: the workers share a random one, so dashboard "
                "sessions end when omixa serve restarts"
            )

    def _say_how_limits_work(self) -> None:
        if self._config.cluster.redis_url:
            log.info("%d workers share every limit through Redis ([cluster] redis_url)", self._count)
        else:
            log.warning(
                "%d workers without [cluster] redis_url: each admits 1/%d of every deployment's and key's "
                "limit (never more than the limit in total; a busy worker may refuse while another has "
                "room), and replayed signatures are caught only by the worker that saw them first",
                self._count,
                self._count,
            )

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers; report the root URL once every one serves; supervise until
        SIGINT/SIGTERM, then stop them all.

        Errors: RuntimeError when a worker fails before it ever served.
        """
        self._say_how_limits_work()
        with contextlib.ExitStack() as cleanup:
            if self._metrics_dir is not None:
                cleanup.callback(shutil.rmtree, self._metrics_dir, ignore_errors=True)
                if self._config.metrics.bind:
                    registry = exposition_registry(self._metrics_dir)
                    self.metrics_url = cleanup.enter_context(serving(self._config.metrics.bind, registry))
                    log.info("metrics of every worker at %s", self.metrics_url)
            await self._supervise(task_status)

    async def _supervise(self, task_status: trio.TaskStatus[str]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                ready = [trio.Event() for _ in range(self._count)]
                for index in range(self._count):
                    nursery.start_soon(self._keep_running, index, ready[index], nursery.cancel_scope)
                for event in ready:
                    await event.wait()
                log.info("%d workers serve at %s", self._count, root_url(self._sock))
                task_status.started(root_url(self._sock))
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        self._signal_all(signal.SIGHUP)
                        continue
                    log.info("received %s: stopping the workers", signal.Signals(signum).name)
                    break
                self._stopping = True
                self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signum)

    async def _keep_running(self, index: int, ready: trio.Event, everything: trio.CancelScope) -> None:
        backoff = RESTART_MIN
        fd = self._sock.fileno()
        while True:
            started = trio.current_time()
            process = await trio.lowlevel.open_process(
                worker_argv(self._serve_args, index, self._count, fd),
                stdout=subprocess.PIPE,
                pass_fds=(fd,),
                start_new_session=True,
                env=self._env,
            )
            self._processes[index] = process
            try:
                async with trio.open_nursery() as watch:
                    watch.start_soon(self._read_until_ready, process, ready)
                    await process.wait()
                    watch.cancel_scope.cancel()
            finally:
                if process.returncode is None:  # cancelled: the supervisor is going away
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
            if self._metrics_dir is not None:
                mark_process_dead(process.pid, self._metrics_dir)
            if self._stopping:
                return
            if not ready.is_set():
                log.error("worker %d (pid %d) failed to start (exit status %s)", index, process.pid, process.returncode)
                everything.cancel()
                raise RuntimeError(f"worker {index} failed to start")
            self.restarts += 1
            if trio.current_time() - started >= STABLE_SECONDS:
                backoff = RESTART_MIN
            log.warning(
                "worker %d (pid %d) exited (status %s); starting it again in %.1f s",
                index,
                process.pid,
                process.returncode,
                backoff,
            )
            await trio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_MAX)
            if self._stopping:
                return

    async def _read_until_ready(self, process: trio.Process, ready: trio.Event) -> None:
        """Wait for the worker's ``OMIXA_BASE_URL=`` line, then keep its stdout drained."""
        assert process.stdout is not None
        buffer = b""
        with trio.move_on_after(START_TIMEOUT) as start:
            while b"OMIXA_BASE_URL=" not in buffer:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    return
                buffer += chunk
        if start.cancelled_caught:
            log.error("worker (pid %d) did not start within %.0f s", process.pid, START_TIMEOUT)
            process.kill()
            return
        ready.set()
        while await process.stdout.receive_some():
            pass
