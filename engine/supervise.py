"""Supervision: restart a crashed long-lived task with backoff, and say so in the log.

A task that returns normally is done (actors return when their mailbox closes). A task that
raises an ``Exception`` is restarted after a growing delay (capped); cancellation always
propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("omixa.supervise")


async def supervised(
    name: str,
    run: Callable[..., Awaitable[Any]],
    *,
    max_backoff: float = 5.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``run(task_status=...)`` until it returns, restarting it after a crash.

    Readiness is reported the first time ``run`` calls ``task_status.started()``, whether in
    its first run or after a restart.
    """
    backoff = 0.05
    status = _Once(task_status)
    while True:
        try:
            await run(task_status=status)
            return
        except Exception:
            log.exception("task %s crashed; restarting in %.2fs", name, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)


class _Once:
    """Passes ``started()`` on to the real status only the first time, so a task that
    crashed after it was ready can report ready again when restarted."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status = status
        self._done = False

    def started(self, value: None = None) -> None:
        if not self._done:
            self._done = True
            self._status.started(value)
