"""How one process takes part in a gateway of many: its link to the shared coordination store.

With ``[cluster] redis_url``, each deployment actor keeps its deployment's windows and health
in Redis (:mod:`storage.coordination`), so every process that uses the same Redis admits
against the same counts: the sum admitted never exceeds a limit. The actor stays the only
one in its process that talks to Redis about its deployment, and sends whatever arrived
while its previous call was in flight as one batch (one script call): about one round trip
per batch, not per request. The key limiter does the same for every key's windows
(:mod:`engine.keylimits`), and the signature verifier claims each signature with a nonce
(:mod:`engine.signatures`).

When Redis fails or does not answer within ``[cluster] timeout_seconds``, each actor decides
alone on its process's *share*: every limit divided by the live processes (the ``instances``
table), rounded down, less what the shared window held when the actor last read it. Requests keep being
served; no limit is exceeded as long as the live count is right. Redis is tried again every
``retry_seconds``; once it answers, what was admitted meanwhile is added to the shared
windows and the actors decide there again. One WARNING when the process goes alone, one
INFO when it is back.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Collection

import attrs
import trio

from omixa.engine.config import ClusterConfig
from omixa.engine.windows import DEPLOYMENT_WINDOWS
from omixa.storage.coordination import Coordinator

log = logging.getLogger("omixa.cluster")


@attrs.frozen
class Share:
    """The part of every limit one process may admit when it cannot count with the others:
    worker ``index`` of ``count`` (``omixa serve --workers`` without Redis), or one of the
    live processes while Redis is away. The shares of all ``count`` add up to the limit."""

    index: int = 0
    count: int = 1

    @classmethod
    def unranked(cls, count: int) -> Share:
        """One of ``count`` processes that cannot tell which one it is (each admits
        ``limit // count``, so together never more than the limit)."""
        return cls(index=max(1, count), count=max(1, count))

    def of(self, limit: int) -> int:
        return limit // self.count + (1 if self.index < limit % self.count else 0)


WHOLE = Share()


class ClusterLink:
    """The process's coordinator, its settings, and who among its actors runs alone."""

    def __init__(
        self,
        coordinator: Coordinator,
        config: ClusterConfig,
        live_processes: Callable[[], int],
        *,
        instance_id: str = "",
    ) -> None:
        """``instance_id``: this process's name in the ``instances`` table (its requests in
        flight are reported under it)."""
        self.coordinator = coordinator
        self.config = config
        self.instance_id = instance_id or f"inst_{secrets.token_hex(8)}"
        self._live_processes = live_processes
        self._alone: set[str] = set()
        self.fallbacks: dict[str, int] = {}  # times each part went on alone

    def live_processes(self) -> int:
        """Processes of this gateway alive at the last check (this one included, at least 1)."""
        return max(1, self._live_processes())

    @property
    def alone(self) -> bool:
        """Some deployment of this process decides on its share (Redis is not answering)."""
        return bool(self._alone)

    def went_alone(self, part: str, reason: str) -> None:
        """``part`` (a deployment, "developer keys", "signatures") found Redis not answering."""
        if not self._alone:
            log.warning(
                "Redis at %s is not answering (%s): until it does, every deployment and key admits "
                "at most this process's share of its limits (1/%d), and replayed signatures are "
                "caught only by the process that saw them first",
                self.coordinator.where,
                reason,
                self.live_processes(),
            )
        if part not in self._alone:
            self.fallbacks[part] = self.fallbacks.get(part, 0) + 1
        self._alone.add(part)

    def rejoined(self, part: str) -> None:
        if part in self._alone:
            self._alone.discard(part)
            if not self._alone:
                log.info("Redis at %s answers again: limits and replay checks are shared again", self.coordinator.where)


# How often an AdmissionBook drops what left its windows.
SWEEP_MS = 10_000


class AdmissionBook:
    """What one process admitted into a deployment's windows, per window bucket, for as long
    as it counts (the window's span), in Redis's clock (ms).

    Two of them per actor: everything it admitted (put back if Redis lost the deployment's
    state, e.g. restarted empty) and what it admitted alone (added when Redis answers again).
    """

    __slots__ = ("_entries", "_shape", "_swept_at")

    def __init__(self, shape: Callable[[str], tuple[float, float]] = lambda window: DEPLOYMENT_WINDOWS[window]) -> None:
        """``shape(window)``: the window's (span, bucket resolution), seconds."""
        self._shape = shape
        self._entries: dict[tuple[str, int], list[int]] = {}  # (window, bucket) -> [amount, latest ms]
        self._swept_at = 0

    def sweep(self, now_ms: int) -> None:
        """Drop what no longer counts; at most every :data:`SWEEP_MS` (call it freely)."""
        if now_ms - self._swept_at >= SWEEP_MS:
            self._swept_at = now_ms
            self._drop_expired(now_ms)

    def _drop_expired(self, now_ms: int) -> None:
        self._entries = {
            key: entry for key, entry in self._entries.items() if entry[1] > now_ms - self._shape(key[0])[0] * 1000
        }

    def __bool__(self) -> bool:
        return bool(self._entries)

    def add(self, window: str, at_ms: int, amount: int) -> None:
        entry = self._entries.setdefault((window, at_ms // self._resolution_ms(window)), [0, at_ms])
        entry[0] += amount
        entry[1] = max(entry[1], at_ms)

    def correct(self, window: str, at_ms: int, delta: int) -> None:
        """Change the amount admitted at ``at_ms`` by ``delta`` (never below zero)."""
        entry = self._entries.get((window, at_ms // self._resolution_ms(window)))
        if entry is not None:
            entry[0] = max(0, entry[0] + delta)

    def merge(self, other: AdmissionBook) -> None:
        for (window, _), (amount, latest) in other._entries.items():
            self.add(window, latest, amount)

    def take(self) -> AdmissionBook:
        """Move everything out into a new book; this one is left empty."""
        taken = AdmissionBook(self._shape)
        taken._entries, self._entries = self._entries, {}
        return taken

    def windows(self) -> set[str]:
        return {window for window, _ in self._entries}

    def entries(self, windows: Collection[str], now_ms: int) -> tuple[tuple[int, int, int], ...]:
        """(index in ``windows``, latest ms, amount) of what still counts, for a batch; drops
        what no longer does."""
        index = {window: i for i, window in enumerate(windows)}
        self._drop_expired(now_ms)
        return tuple(
            (index[window], latest, amount)
            for (window, _), (amount, latest) in self._entries.items()
            if window in index and amount > 0
        )

    def _resolution_ms(self, window: str) -> int:
        return int(self._shape(window)[1] * 1000)


class SharedSide:
    """One process's side of a namespace shared through Redis (one deployment's state, or
    every key's limits): Redis's clock, the state's epoch, whether this process is deciding
    alone, and what it admitted, to put back (:class:`AdmissionBook`)."""

    def __init__(self, cluster: ClusterLink | None, part: str, shape: Callable[[str], tuple[float, float]]) -> None:
        """``part``: its name in the logs ("developer keys", a deployment's name)."""
        self._cluster = cluster
        self._part = part
        self.mine = AdmissionBook(shape)  # everything admitted within the spans
        self.gap = AdmissionBook(shape)  # what was admitted alone, not yet sent
        self.epoch = ""  # the name of the shared state this process knows
        self.restore_due = False  # Redis lost that state: put ``mine`` back in the next call
        self.alone = False
        self.offset = time.time() - trio.current_time()  # Redis's clock minus trio's, seconds

    @property
    def restoring(self) -> bool:
        """The next call puts back ``mine`` if Redis lost the state (alone, or it did)."""
        return self.alone or self.restore_due

    def redis_ms(self, now: float) -> int:
        return int((now + self.offset) * 1000)

    def local_time(self, redis_ms: int) -> float:
        return redis_ms / 1000 - self.offset

    def admitted_alone(self, window: str, now: float, amount: int) -> None:
        at_ms = self.redis_ms(now)
        self.gap.add(window, at_ms, amount)
        self.mine.add(window, at_ms, amount)

    def replays(
        self, gap: AdmissionBook, windows: Collection[str], now_ms: int
    ) -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]:
        """A call's ``add`` (``gap``, taken from :attr:`gap`) and ``restore`` entries."""
        self.mine.sweep(now_ms)
        restore = self.mine.entries(windows, now_ms) if self.restoring else ()
        return gap.entries(windows, now_ms), restore

    def go_alone(self, reason: str) -> bool:
        """Redis failed this call; True if the process was not alone already."""
        if self.alone:
            return False
        self.alone = True
        if self._cluster is not None:
            self._cluster.went_alone(self._part, reason)
        return True

    def answered(self, *, redis_now_ms: int, epoch: str, fresh: bool, restored: bool, sent: float) -> bool:
        """Redis answered a call sent at trio time ``sent``; True when another call is due at
        once (the state was lost and nothing was put back yet, or something was admitted
        alone while the call was in flight)."""
        self.offset = redis_now_ms / 1000 - (sent + trio.current_time()) / 2
        again = False
        if fresh and not restored:
            self.restore_due = again = True
        else:
            self.epoch, self.restore_due = epoch, False
        if self.alone:
            self.alone = False
            if self._cluster is not None:
                self._cluster.rejoined(self._part)
            again = again or bool(self.gap)
        return again
