"""How one process takes part in a gateway of many: its link to the shared coordination store.

With ``[cluster] redis_url``, each deployment actor keeps its deployment's windows and health
in Redis (:mod:`storage.coordination`), so every process that uses the same Redis admits
against the same counts: the sum admitted never exceeds a limit. The actor stays the only
one in its process that talks to Redis about its deployment, and sends whatever arrived
while its previous call was in flight as one batch (one script call): about one round trip
per batch, not per request.

When Redis fails or does not answer within ``[cluster] timeout_seconds``, each actor decides
alone on its process's *share*: every limit divided by the live processes (the ``instances``
table), less what the shared window held when the actor last read it. Requests keep being
served; no limit is exceeded as long as the live count is right. Redis is tried again every
``retry_seconds``; once it answers, what was admitted meanwhile is added to the shared
windows and the actors decide there again. One WARNING when the process goes alone, one
INFO when it is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from omixa.engine.config import ClusterConfig
from omixa.storage.coordination import Coordinator

log = logging.getLogger("omixa.cluster")


class ClusterLink:
    """The process's coordinator, its settings, and who among its actors runs alone."""

    def __init__(self, coordinator: Coordinator, config: ClusterConfig, live_processes: Callable[[], int]) -> None:
        self.coordinator = coordinator
        self.config = config
        self._live_processes = live_processes
        self._alone: set[str] = set()

    def live_processes(self) -> int:
        """Processes of this gateway alive at the last check (this one included, at least 1)."""
        return max(1, self._live_processes())

    @property
    def alone(self) -> bool:
        """Some deployment of this process decides on its share (Redis is not answering)."""
        return bool(self._alone)

    def went_alone(self, deployment: str, reason: str) -> None:
        if not self._alone:
            log.warning(
                "Redis at %s is not answering (%s): each deployment now admits at most this "
                "process's share of its limits (1/%d) until it does",
                self.coordinator.where,
                reason,
                self.live_processes(),
            )
        self._alone.add(deployment)

    def rejoined(self, deployment: str) -> None:
        if deployment in self._alone:
            self._alone.discard(deployment)
            if not self._alone:
                log.info("Redis at %s answers again: limits are shared again", self.coordinator.where)
