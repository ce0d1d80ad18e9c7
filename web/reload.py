"""Live reload of ``[[deployments]]``: on SIGHUP, or when the config file changes on disk.

``omixa add-azure-deployment`` on a running server's config file is picked up the same way.
Only the deployments are reloaded (see :mod:`engine.fleet`); a change to any other section is
logged as needing a restart. A config that fails to load or names an unknown model is
logged and ignored: the running deployments stay as they were.
"""

from __future__ import annotations

import gc
import logging
import signal
from pathlib import Path

import attrs
import trio

from omixa.engine.catalog import CatalogError
from omixa.engine.config import ConfigError
from omixa.engine.config_loader import load_config
from omixa.engine.runtime import Engine, deployed_encodings
from omixa.engine.tokens import warm_up

log = logging.getLogger("omixa.reload")


async def reload_once(engine: Engine, path: Path) -> bool:
    """Load ``path`` and apply its deployments. Returns whether it was applied."""
    try:
        config = await trio.to_thread.run_sync(load_config, path)
        encodings = deployed_encodings(engine.catalog, config.deployments)
        await trio.to_thread.run_sync(warm_up, encodings)  # before a new model's first request
        change = await engine.fleet.apply(config.deployments)
    except (ConfigError, CatalogError, ValueError) as exc:
        log.error("reload of %s refused, deployments unchanged: %s", path, exc)
        return False
    running = engine.config
    if attrs.evolve(config, deployments=running.deployments, storage=running.storage) != running:
        log.warning("reload of %s: changes outside [[deployments]] apply after a restart", path)
    log.info("reloaded %s: %s", path, change)
    _refreeze()
    return True


def _refreeze() -> None:
    """``omixa serve`` froze its start-up objects out of the collector's reach
    (:func:`web.server.freeze_start_up_objects`); what a reload replaced would stay frozen,
    and leak if it sits in reference cycles. Thaw, collect, freeze again: one full
    collection per reload."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


async def watch_config(engine: Engine, path: Path, poll_seconds: float) -> None:
    """Reload on SIGHUP, and whenever the file's modification time changes."""
    seen = _mtime(path)
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for _ in signals:
                    log.info("SIGHUP: reloading %s", path)
                    await reload_once(engine, path)

            nursery.start_soon(on_signal)
            if poll_seconds <= 0:
                return
            while True:
                await trio.sleep(poll_seconds)
                current = _mtime(path)
                if current is not None and current != seen:
                    seen = current
                    await reload_once(engine, path)
