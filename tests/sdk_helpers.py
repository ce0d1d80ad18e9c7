"""The official openai SDK from trio tests: its calls block, so they run in a worker thread."""

from __future__ import annotations

from typing import Any

import trio


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread, off the event loop the gateway runs on."""
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))
