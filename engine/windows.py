"""Sliding usage windows (requests or tokens over the last N seconds) and a deployment's health.

A :class:`SlidingWindow` keeps counts in fixed buckets (1 s for the minute windows, 60 s for
the hour window), so memory is bounded whatever the traffic. A bucket remembers when its
latest amount was added, and leaves the window once that is ``span`` seconds ago: an amount
never leaves early, and at most one bucket's resolution late (a burst leaves exactly
``span`` after it came, so the wait a refusal announces is never longer than the span). A
burst up to the limit is admitted at once (there is no smoothing). An amount may be corrected
after the fact (:meth:`SlidingWindow.adjust`, used when the real usage replaces the admission
estimate) as long as its bucket is still inside the window.

Times are ``trio.current_time()`` seconds, passed in, so tests run on trio's autojump clock.
"""

from __future__ import annotations

import collections
import math

import attrs


class SlidingWindow:
    """The total of amounts added in the last ``span`` seconds, against a ``limit``."""

    __slots__ = ("limit", "span", "resolution", "_buckets", "_total")

    def __init__(self, limit: int, span: float, resolution: float) -> None:
        self.limit = limit
        self.span = span
        self.resolution = resolution
        # [start, amount, time of the latest add]
        self._buckets: collections.deque[list[float]] = collections.deque()
        self._total = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.span
        buckets = self._buckets
        while buckets and buckets[0][2] <= horizon:
            self._total -= buckets.popleft()[1]

    def used(self, now: float) -> int:
        self._expire(now)
        return max(0, math.ceil(self._total))

    def room(self, now: float) -> int:
        return max(0, self.limit - self.used(now))

    def fits(self, now: float, amount: int) -> bool:
        return self.used(now) + amount <= self.limit

    def add(self, now: float, amount: int) -> None:
        self._expire(now)
        start = now - now % self.resolution
        if self._buckets and self._buckets[-1][0] == start:
            bucket = self._buckets[-1]
            bucket[1] += amount
            bucket[2] = now
        else:
            self._buckets.append([start, float(amount), now])
        self._total += amount

    def clear_at(self, now: float) -> float:
        """When everything now in the window will have left it (``now`` if it is empty)."""
        self._expire(now)
        return self._buckets[-1][2] + self.span if self._buckets else now

    def adjust(self, at: float, delta: int) -> None:
        """Correct an amount added at time ``at`` (no effect once it left the window)."""
        start = at - at % self.resolution
        for bucket in reversed(self._buckets):
            if bucket[0] == start:
                change = max(delta, -bucket[1])  # never below what the bucket holds
                bucket[1] += change
                self._total += change
                return
            if bucket[0] < start:
                return

    def room_at(self, now: float, amount: int) -> float | None:
        """The earliest time at which ``amount`` more fits, or None if it never can."""
        if amount > self.limit:
            return None
        self._expire(now)
        excess = self._total + amount - self.limit
        if excess <= 0:
            return now
        for _start, value, latest in self._buckets:
            excess -= value
            if excess <= 0:
                return latest + self.span
        return now + self.span


# A deployment's windows: (span, bucket resolution) in seconds.
DEPLOYMENT_WINDOWS = {"rpm": (60.0, 1.0), "tpm": (60.0, 1.0), "hourly_tokens": (3600.0, 60.0)}


def minute_window(limit: int) -> SlidingWindow:
    return SlidingWindow(limit, 60.0, 1.0)


def hour_window(limit: int) -> SlidingWindow:
    return SlidingWindow(limit, 3600.0, 60.0)


@attrs.define
class Health:
    """Cooldown after a 429 and a circuit breaker for consecutive failures.

    States: ``closed`` (healthy), ``cooling`` (429 until ``until``), ``open`` (breaker open
    until ``until``), ``half_open`` (one probe request allowed; its outcome closes or re-opens
    the breaker).
    """

    failures_to_open: int
    cooldown_seconds: float
    state: str = "closed"
    until: float = 0.0
    consecutive_failures: int = 0
    probing: bool = False

    def refresh(self, now: float) -> None:
        if self.state == "cooling" and now >= self.until:
            self.state = "closed"
        elif self.state == "open" and now >= self.until:
            self.state, self.probing = "half_open", False

    def admits(self, now: float) -> bool:
        self.refresh(now)
        if self.state == "closed":
            return True
        return self.state == "half_open" and not self.probing

    def retry_at(self, now: float) -> float:
        """When this deployment may take a request again (now if it may)."""
        self.refresh(now)
        if self.state in ("cooling", "open"):
            return self.until
        return now

    def on_admit(self) -> None:
        if self.state == "half_open":
            self.probing = True

    def on_rate_limited(self, now: float, retry_after: float | None) -> None:
        wait = retry_after if retry_after is not None else self.cooldown_seconds
        if self.state in ("closed", "cooling"):
            self.state, self.until = "cooling", max(self.until, now + wait)
        elif self.state == "half_open":
            self.state, self.until, self.probing = "open", now + wait, False

    def on_failure(self, now: float) -> None:
        self.consecutive_failures += 1
        if self.state == "half_open" or self.consecutive_failures >= self.failures_to_open:
            self.state, self.until, self.probing = "open", now + self.cooldown_seconds, False

    def on_success(self) -> None:
        self.consecutive_failures = 0
        if self.state in ("half_open", "open"):
            self.state, self.probing = "closed", False

    def on_released(self) -> None:
        """A probe that ended without telling us anything (the client left)."""
        self.probing = False
