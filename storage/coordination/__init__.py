"""State shared by every process of one gateway through Redis: the coordination store.

The database keeps what must last (money, logs); Redis keeps what many processes must agree
on for seconds to an hour: each deployment's usage windows and health, and each developer
key's requests and tokens per minute, and the signatures already accepted. Open it with
:func:`open_coordinator` (plain trio: :mod:`.connection` says how it talks to Redis).
"""

from omixa.storage.coordination.redis_client import (
    Coordinator,
    CoordinatorError,
    DeploymentBatch,
    DeploymentState,
    KeysBatch,
    KeysState,
    open_coordinator,
)

__all__ = [
    "Coordinator",
    "CoordinatorError",
    "DeploymentBatch",
    "DeploymentState",
    "KeysBatch",
    "KeysState",
    "open_coordinator",
]
