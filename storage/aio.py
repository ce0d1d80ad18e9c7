"""The one bridge from trio to asyncio (for asyncpg), through trio-asyncio.

Rule: each unit of asyncio work is one plain asyncio coroutine function, called once through
:meth:`AioBridge.run`. Nothing asyncio-owned (a pooled connection, a transaction) is ever held
across trio code: cancelling a bridged call cancels the asyncio task, which cancels the
server-side query and returns the connection to the pool; holding a connection from trio
leaks it on cancel (``async with aio_as_trio(pool.acquire())`` does not release it, and
``pool.close()`` then hangs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio_asyncio

from omixa.storage.errors import StorageError

T = TypeVar("T")

logger = logging.getLogger("omixa.storage.aio")


def resolve_loop(loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    """``loop``, else the trio-asyncio loop of the current task.

    Errors: StorageError if there is none (open the storage inside
    ``trio_asyncio.open_loop()`` or pass ``loop=``).
    """
    if loop is None:
        loop = trio_asyncio.current_loop.get()
    if loop is None:
        raise StorageError(
            "PostgreSQL storage needs a trio-asyncio loop: open it inside "
            "`async with trio_asyncio.open_loop() as loop:` or pass loop="
        )
    return loop


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # trio-asyncio's default handler re-raises these into the loop's nursery and takes the
    # loop (and everything using it) down; asyncpg reports recoverable things this way
    # (e.g. "Resetting connection with an active transaction" after a cancelled query).
    logger.warning("asyncio: %s", context.get("message", "unhandled error"), exc_info=context.get("exception"))


class AioBridge:
    """Runs asyncio coroutine functions from trio on one explicit trio-asyncio loop.

    The loop is passed explicitly on every call because the ``current_loop`` contextvar is
    not visible from tasks started outside ``open_loop()`` (e.g. pytest-trio fixtures).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        if loop.get_exception_handler() is None:
            loop.set_exception_handler(_log_loop_exception)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` as an asyncio task on the loop.

        Cancellation: the asyncio task is cancelled and this raises ``trio.Cancelled``.
        """
        return await trio_asyncio.aio_as_trio(fn, loop=self.loop)(*args)
