"""Supervision: restart a crashed long-lived task with backoff, and say so in the log.

A task that returns normally is done (actors return when their mailbox closes). A task that
raises an ``Exception`` is restarted after a growing delay (capped); cancellation always
propagates. A :class:`Supervision` given to :func:`supervised` knows which tasks are not
running now (starting, or waiting to restart after a crash): what readiness reports.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("omixa.supervise")


class Supervision:
    """The state of every supervised task that has not returned: ``starting`` until it says
    it is ready, ``running``, or ``restarting`` after a crash."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    def not_running(self) -> list[str]:
        """The tasks that are not running now, by name."""
        return sorted(name for name, state in self.states.items() if state != "running")


async def supervised(
    name: str,
    run: Callable[..., Awaitable[Any]],
    *,
    max_backoff: float = 5.0,
    supervision: Supervision | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``run(task_status=...)`` until it returns, restarting it after a crash.

    Readiness is reported the first time ``run`` calls ``task_status.started()``, whether in
    its first run or after a restart; ``supervision`` follows the task's state.
    """
    backoff = 0.05
    states = supervision.states if supervision is not None else {}
    status = _Once(task_status, lambda: states.__setitem__(name, "running"))
    try:
        while True:
            states[name] = "starting"
            try:
                await run(task_status=status)
                return
            except Exception:
                states[name] = "restarting"
                log.exception("task %s crashed; restarting in %.2fs", name, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
    finally:
        states.pop(name, None)


class _Once:
    """Passes ``started()`` on to the real status only the first time, so a task that
    crashed after it was ready can report ready again when restarted; ``running`` is called
    on every run's ``started()``."""

    def __init__(self, status: trio.TaskStatus[None], running: Callable[[], None]) -> None:
        self._status = status
        self._running = running
        self._done = False

    def started(self, value: None = None) -> None:
        self._running()
        if not self._done:
            self._done = True
            self._status.started(value)
