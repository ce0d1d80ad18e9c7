"""The root of a running gateway: one tree, started in order, stopped in reverse.

    trio_asyncio loop            (the asyncpg bridge lives under it)
     └─ storage                  (migrated before anything else starts)
         └─ Redis client         (only with [cluster] redis_url; connects on first use)
             └─ engine actors    (deployments, wallets, usage aggregator)
                 └─ Hypercorn    (ready: task_status.started(Gateway))

Shutdown (SIGINT/SIGTERM, or the ``shutdown_trigger`` returning): Hypercorn stops accepting,
lets in-flight requests finish for ``server.shutdown_grace_seconds``, then cancels them (each
settles itself in a shielded step); then the actors drain their mailboxes (the aggregator
writes its last batch) and storage closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import hypercorn.trio
import trio
import trio_asyncio
from hypercorn.config import Config as HypercornConfig

from omixa.engine.cluster import WHOLE, Share
from omixa.engine.config import Config, storage_url
from omixa.engine.metrics import serving
from omixa.engine.runtime import Engine, open_engine
from omixa.storage import open_storage
from omixa.storage.coordination import Coordinator, open_coordinator
from omixa.web.http.app import create_app
from omixa.web.http.connection import ConnectionGuard
from omixa.web.http.lifecycle import RequestScope
from omixa.web.reload import watch_config

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

log = logging.getLogger("omixa.server")

M_ARENA_MAX = -8  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
# Allocations from this size up get pages of their own, given back to the system when freed.
MMAP_THRESHOLD_BYTES = 256 * 1024


def limit_malloc_arenas() -> None:
    """Keep the process to one glibc malloc arena, unless ``MALLOC_ARENA_MAX`` is set, and
    give large blocks back to the system when they are freed, unless
    ``MALLOC_MMAP_THRESHOLD_`` is set.

    glibc gives a thread that allocates its own arena; the worker thread that loads the
    tokenizer leaves one behind. With one arena, ``omixa serve`` with the bench config used
    about 2 MB less at start-up and 4 MB less with 1,000 streams open, at the same
    throughput (bench/README.md). Small Python objects come from pymalloc's own arenas, not
    from malloc, so the worker threads seldom wait for that one arena. A no-op where there is no glibc ``mallopt``.
    Call it before any thread starts.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    if not os.environ.get("MALLOC_ARENA_MAX"):
        mallopt(M_ARENA_MAX, 1)
    if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        # A fixed threshold: glibc's own starts at 128 KiB but rises to the size of every
        # large block freed (up to 32 MiB), after which large request bodies (up to
        # server.max_body_bytes, and the copies decoding makes) come from the heap and stay
        # there. In the bench's stall scenario, 4 MB prompts sent back to back left the
        # process at 232 MB instead of about 110 MB.
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def freeze_start_up_objects() -> None:
    """Move every object alive now (modules, catalog, app, actors) out of the garbage
    collector's reach (``gc.freeze``); call it once the gateway serves.

    They live as long as the process, yet every full collection walked them again: about
    70,000 objects. In a bench run (SQLite, c64 and c1 load, about 15,000 requests) the
    full collections took 324 ms in all, the longest 67 ms (a stall every request in
    flight waits out); after the freeze, 79 ms in all, the longest 33 ms.

    Then the heap that start-up freed (the tokenizer's rank table, built and dropped while
    loading) goes back to the system (glibc's ``malloc_trim``; a no-op elsewhere).
    """
    gc.collect()
    gc.freeze()
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim(0)


@attrs.frozen(kw_only=True)
class Gateway:
    """A running gateway, as reported to whoever started it."""

    base_url: str  # http://HOST:PORT/api/v1
    root_url: str  # http://HOST:PORT
    engine: Engine
    metrics_url: str | None = None  # the [metrics] bind listener, when this process serves one


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            return


# After an early answer (401, 404, 413...), the unread request body is read and discarded, up
# to this long and drain_bytes(), so the connection can carry the next request
# (web.connection); a larger or slower body ends with the connection closed.
DRAIN_SECONDS = 10.0


def drain_bytes(config: Config) -> int:
    """Twice the largest accepted body, at least 8 MiB: a body refused with 413 for being a
    little too large is still read, so the client sees the 413 and keeps its connection."""
    return max(2 * config.server.max_body_bytes, 8 * 1024 * 1024)


def sample_from_thread(engine: Engine, token: trio.lowlevel.TrioToken) -> None:
    """Sample the engine's state for a scrape of ``[metrics] bind`` (served from a thread),
    on the engine's loop, within 5 s."""
    if engine.sampler is not None:
        sampler = engine.sampler

        async def bounded() -> None:
            with trio.move_on_after(5):
                await sampler.sample()

        trio.from_thread.run(bounded, trio_token=token)


def hypercorn_config(config: Config, host: str, port: int, fd: int | None = None) -> HypercornConfig:
    """Hypercorn's settings; ``fd``: serve on this inherited listening socket (a worker)."""
    hc = HypercornConfig()
    if fd is not None:
        hc.bind = [f"fd://{fd}"]
    else:
        hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.graceful_timeout = config.server.shutdown_grace_seconds
    hc.accesslog = None  # chat requests get one structured line each from the engine instead
    # Its logger, not "-": Hypercorn would give it a stderr handler of its own (each of its
    # lines twice, once not in [logging]'s format); this one writes through ours.
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75
    hc.backlog = 1024
    hc.include_server_header = False
    return hc


@contextlib.asynccontextmanager
async def open_cluster(config: Config) -> AsyncIterator[Coordinator | None]:
    """The Redis client of ``[cluster] redis_url``, or None when there is none."""
    cluster = config.cluster
    if not cluster.redis_url:
        yield None
        return
    async with open_coordinator(
        cluster.redis_url, prefix=cluster.key_prefix, timeout=cluster.timeout_seconds
    ) as coordinator:
        log.info("deployment limits and health shared through Redis at %s", coordinator.where)
        yield coordinator


async def run_gateway(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] = wait_for_signal,
    config_path: Path | None = None,
    fd: int | None = None,
    share: Share = WHOLE,
    span_processor: SpanProcessor | None = None,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns; report the bound address when ready.

    With ``config_path``, its ``[[deployments]]`` are reloaded on SIGHUP and when the file
    changes (:mod:`web.reload`). A worker of ``omixa serve --workers`` (:mod:`web.workers`)
    serves on the inherited socket ``fd`` and, without Redis, admits ``share`` of every limit.
    ``span_processor`` (tests: an in-memory exporter's) receives the requests' spans
    (:func:`engine.runtime.open_engine`).

    Errors: storage.StorageError (database unreachable or migrations failing),
    catalog.CatalogError, ValueError (a deployment's model missing from the catalog),
    OSError (the port is taken), ConfigError (tracing on without OpenTelemetry).
    """
    host = host or config.server.host
    port = config.server.port if port is None else port
    async with trio_asyncio.open_loop() as loop:
        async with open_storage(storage_url(config), loop=loop) as storage, open_cluster(config) as coordinator:
            async with open_engine(
                config, storage, coordinator=coordinator, share=share, span_processor=span_processor
            ) as engine:
                app = ConnectionGuard(
                    RequestScope(create_app(engine), engine.tracing),
                    drain_bytes=drain_bytes(config),
                    drain_seconds=DRAIN_SECONDS,
                )

                async def shutdown() -> None:
                    await shutdown_trigger()
                    engine.chat.start_draining()

                async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
                    await hypercorn.trio.serve(
                        app,  # type: ignore[arg-type]  # an ASGI 3 app; hypercorn's alias wants its own scope types
                        hypercorn_config(config, host, port, fd),
                        shutdown_trigger=shutdown,
                        task_status=task_status,
                    )
                    nursery.cancel_scope.cancel()  # the server is done: stop the watcher

                with contextlib.ExitStack() as listeners:
                    metrics_url = None
                    if engine.metrics is not None and engine.metrics.registry is not None and config.metrics.bind:
                        # (A worker's metrics are served by its supervisor, for all workers.)
                        sample = partial(sample_from_thread, engine, trio.lowlevel.current_trio_token())
                        metrics_url = listeners.enter_context(
                            serving(config.metrics.bind, engine.metrics.registry, before=sample)
                        )
                        log.info("metrics at %s", metrics_url)
                    async with trio.open_nursery() as nursery:
                        binds = await nursery.start(serve)
                        if config_path is not None:
                            nursery.start_soon(watch_config, engine, config_path, config.server.reload_poll_seconds)
                        root = binds[0]
                        task_status.started(
                            Gateway(base_url=f"{root}/api/v1", root_url=root, engine=engine, metrics_url=metrics_url)
                        )
