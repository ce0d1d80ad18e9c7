"""Per-key rate limits: requests and tokens per minute for each developer key.

Each key has a sliding minute window of requests and one of tokens (the same bucketed
windows as deployments, :mod:`engine.windows`). A model call counts one request as soon as
its key is known, before its body is read (:meth:`KeyLimiter.admit_request`), so every
call counts, also one refused later for a bad body or an empty wallet. Once its estimate
is known (prompt + output cap, as the deployments count it), that estimate counts against
the tokens window (:meth:`KeyLimiter.admit_tokens`); when the call ends, the estimate is
replaced by the real usage. Over either limit the call gets ``429 rate_limited`` with
``Retry-After`` before anything is held or sent, its type ``requests`` or ``tokens`` after
the limit that refused (as OpenAI's); a call whose estimate alone exceeds the tokens limit
could never fit, so it gets 400 ``invalid_request`` instead (a client retrying a 429 would
retry it for nothing).

Limits come from the key (``omixa key create --rpm/--tpm``) or else ``[limits] key_rpm`` /
``key_tpm``; 0 means unlimited. Only model calls count (chat completions, embeddings,
images, the playground), not reads such as ``/wallet``.

On one process the windows are local and every check is synchronous: under trio's
cooperative scheduling a check and its update are one atomic step, with no mailbox hop on
the hot path; idle keys' windows are dropped once they are empty. With ``[cluster]
redis_url`` (:mod:`engine.cluster`), the windows are counted in Redis for every process: the
admissions that arrive while a call is in flight go in the next call, one for all keys, and
each waits for its answer; the corrections ride along. While Redis does not answer, each
process decides on its share (the limit divided by the live processes, starting from what
the shared window held when it last read it), and puts back what it admitted once Redis
answers again (everything it admitted in the last minute, if Redis lost its state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import trio

from omixa.engine.cluster import WHOLE, ClusterLink, Share, SharedSide
from omixa.engine.config import LimitsConfig
from omixa.engine.deployment_types import DeploymentSnapshot
from omixa.engine.errors import InvalidRequest, RateLimited
from omixa.engine.windows import SlidingWindow, minute_window
from omixa.storage import ApiKeyRecord
from omixa.storage.coordination import CoordinatorError, KeysBatch

# Past this many tracked windows, the empty ones are forgotten.
_PRUNE_AT = 10_000
_SPAN = 60.0  # every key window is a minute, in 1 s buckets
_MESSAGES = {"requests": "requests per minute", "tokens": "tokens per minute"}


@attrs.frozen(kw_only=True)
class LimitView:
    """One dimension's state for the ``x-ratelimit-*`` headers."""

    limit: int
    remaining: int
    reset_seconds: float  # until the window is back to its full limit


@attrs.frozen(kw_only=True)
class Admitted:
    """A call's tokens admitted at ``at`` (trio time); ``shared_at``: Redis's clock (ms) when
    the shared window admitted them."""

    at: float
    shared_at: int | None = None


@attrs.define(kw_only=True)
class _Ask:
    """One admission waiting for the next call to Redis."""

    window: str  # "<key id>/requests" or "<key id>/tokens"
    limit: int
    amount: int
    at: float  # trio time when asked
    done: trio.Event = attrs.field(factory=trio.Event)
    retry_after: float | None = None  # set when refused
    shared_at: int | None = None  # set when the shared window admitted it


class Verdict:
    """An admission decided now (``Admitted``) or by the next call to Redis (``_Ask``)."""

    __slots__ = ("_name", "_outcome")

    def __init__(self, name: str, outcome: Admitted | _Ask) -> None:
        self._name = name
        self._outcome = outcome

    async def check(self) -> Admitted:
        """Errors: RateLimited with ``retry_after`` (seconds until it fits)."""
        ask = self._outcome
        if isinstance(ask, Admitted):
            return ask
        await ask.done.wait()
        if ask.retry_after is not None:
            message = f"Developer key exceeded rate limits ({_MESSAGES[self._name]})."
            raise RateLimited(message, limit=self._name, retry_after=ask.retry_after)
        return Admitted(at=ask.at, shared_at=ask.shared_at)


def _window_id(key_id: str, name: str) -> str:
    return f"{key_id}/{name}"


class KeyLimiter:
    def __init__(self, config: LimitsConfig, cluster: ClusterLink | None = None, *, share: Share = WHOLE) -> None:
        """``share``: the part of each limit this process admits on its own (one of several
        workers without Redis); with ``cluster``, the limits are shared instead."""
        self._config = config
        self._local: dict[str, SlidingWindow] = {}  # window id -> window (its share of the limit)
        self._share = share
        self._cluster = cluster
        # Shared mode: what waits for the next call, and what the last calls said.
        self._queue: list[_Ask] = []
        self._fixes: list[tuple[str, int, int]] = []  # window id, admitted at (Redis ms), delta
        self._fixes_due = math.inf  # when the oldest waiting correction must be sent
        self._views: dict[str, tuple[int, int]] = {}  # window id -> (used, clear_at ms)
        self._limits_seen: dict[str, int] = {}  # window id -> its limit when last asked
        self._views_prune_at = _PRUNE_AT
        self._side = SharedSide(cluster, "developer keys", lambda _window: (_SPAN, 1.0))
        self._wake = trio.Event()
        self._closing = False

    def _limits(self, key: ApiKeyRecord) -> tuple[int, int]:
        rpm = key.rpm if key.rpm is not None else self._config.key_rpm
        tpm = key.tpm if key.tpm is not None else self._config.key_tpm
        return rpm, tpm

    @property
    def _shared(self) -> bool:
        return self._cluster is not None and not self._side.alone

    def start_request(self, key: ApiKeyRecord, now: float) -> Verdict:
        """Count one model call against the key's requests per minute. Called before the
        request's body is read, so every call counts, whatever becomes of it; the body may be
        read while Redis decides (shared mode): ``await verdict.check()`` before acting on it.

        Errors: RateLimited at once when this process decides alone (one process, or Redis
        away); else from :meth:`Verdict.check`.
        """
        rpm, _ = self._limits(key)
        if not rpm:
            return Verdict("requests", Admitted(at=now))
        return self._start(key.id, "requests", rpm, 1, now)

    async def admit_request(self, key: ApiKeyRecord, now: float) -> None:
        """:meth:`start_request` and its verdict. Errors: RateLimited."""
        await self.start_request(key, now).check()

    async def admit_tokens(self, key: ApiKeyRecord, estimated_tokens: int, now: float) -> Admitted:
        """Count a call's ``estimated_tokens`` (prompt + output cap) against the key's tokens
        per minute, or refuse it; pass what it returns to :meth:`settle`.

        Errors: InvalidRequest when the estimate alone exceeds the limit (it can never fit:
        a retry would fail the same way); RateLimited with ``retry_after`` otherwise.
        """
        _, tpm = self._limits(key)
        if not tpm:
            return Admitted(at=now)
        if estimated_tokens > tpm:
            raise InvalidRequest(
                f"This request's {estimated_tokens} estimated tokens (prompt and output cap) exceed "
                f"the key's limit of {tpm} tokens per minute; lower max_tokens or the prompt."
            )
        return await self._start(key.id, "tokens", tpm, estimated_tokens, now).check()

    def _start(self, key_id: str, name: str, limit: int, amount: int, now: float) -> Verdict:
        window = _window_id(key_id, name)
        if self._shared:
            ask = _Ask(window=window, limit=limit, amount=amount, at=now)
            self._queue.append(ask)
            self._wake.set()
            return Verdict(name, ask)
        retry_after = self._admit_locally(window, limit, amount, now)
        if retry_after is not None:
            message = f"Developer key exceeded rate limits ({_MESSAGES[name]})."
            raise RateLimited(message, limit=name, retry_after=retry_after)
        return Verdict(name, Admitted(at=now))

    def _admit_locally(self, window_id: str, limit: int, amount: int, now: float) -> float | None:
        """None when admitted, else the seconds until it fits."""
        if self._cluster is not None:
            self._limits_seen[window_id] = limit  # (for a restore once Redis answers)
        window = self._local_window(window_id, limit, now)
        if not window.fits(now, amount):
            at = window.room_at(now, amount)
            return _SPAN if at is None else max(at - now, 0.001)  # None: larger than a share
        window.add(now, amount)
        if self._side.alone:
            self._side.admitted_alone(window_id, now, amount)
        return None

    def _local_window(self, window_id: str, limit: int, now: float) -> SlidingWindow:
        share = self._share.of(limit)
        window = self._local.get(window_id)
        if window is None:
            if len(self._local) >= _PRUNE_AT:
                self._prune(now)
            window = self._local[window_id] = minute_window(share)
        elif window.limit != share:
            window.limit = share  # the counts stay; only the limit moves
        return window

    def settle(self, key_id: str, admitted: Admitted, estimated_tokens: int, used_tokens: int) -> None:
        """Replace a call's estimate by the tokens it really used."""
        delta = used_tokens - estimated_tokens
        if not delta:
            return
        window_id = _window_id(key_id, "tokens")
        if admitted.shared_at is not None:
            # Sent with the next admissions, or within refresh_seconds. Admitted through
            # Redis but finished while it is away: the estimate stays.
            if self._shared:
                if not self._fixes and self._cluster is not None:
                    self._fixes_due = trio.current_time() + self._cluster.config.refresh_seconds
                    self._wake.set()  # (to set its timer)
                self._fixes.append((window_id, admitted.shared_at, delta))
                self._side.mine.correct(window_id, admitted.shared_at, delta)
        elif (window := self._local.get(window_id)) is not None:
            window.adjust(admitted.at, delta)

    def views(self, key: ApiKeyRecord, now: float) -> dict[str, LimitView]:
        """The key's ``requests`` and ``tokens`` state (unlimited dimensions left out)."""
        views = {}
        for name, limit in zip(("requests", "tokens"), self._limits(key), strict=True):
            if not limit:
                continue
            window_id = _window_id(key.id, name)
            shared = self._views.get(window_id) if self._shared else None
            if shared is not None:
                used, clear_ms = shared
                views[name] = LimitView(
                    limit=limit,
                    remaining=max(limit - used, 0),
                    reset_seconds=max(self._side.local_time(clear_ms) - now, 0.0),
                )
            elif (window := self._local.get(window_id)) is not None:
                views[name] = LimitView(
                    limit=limit,
                    remaining=max(window.limit - window.used(now), 0),
                    reset_seconds=max(window.clear_at(now) - now, 0.0),
                )
            else:
                views[name] = LimitView(limit=limit, remaining=self._share.of(limit), reset_seconds=0.0)
        return views

    def _prune(self, now: float) -> None:
        for window_id in [w for w, window in self._local.items() if window.used(now) == 0]:
            del self._local[window_id]

    def _prune_views(self, now_ms: int) -> None:
        """Forget the shared views (and limits) of windows that are empty by now."""
        self._views = {w: view for w, view in self._views.items() if view[1] > now_ms}
        self._limits_seen = {w: limit for w, limit in self._limits_seen.items() if w in self._views or w in self._local}

    # -- shared mode: the task that talks to Redis ----------------------------------------
    def close(self) -> None:
        """Send what is left (corrections), then :meth:`run` returns."""
        self._closing = True
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send what waits in one call whenever admissions wait and the previous call is back;
        corrections go with them, or after ``refresh_seconds`` (shared mode only; returns at
        once without a cluster)."""
        task_status.started()
        cluster = self._cluster
        if cluster is None:
            return
        while True:
            if not (self._queue or self._side.restore_due or self._closing):
                if self._side.alone:
                    deadline = trio.current_time() + cluster.config.retry_seconds
                else:
                    deadline = self._fixes_due if self._fixes else math.inf
                with trio.move_on_at(deadline):
                    await self._wake.wait()
                self._wake = trio.Event()
                idle = not (self._queue or self._side.restoring or self._closing)
                if idle and (not self._fixes or trio.current_time() < self._fixes_due):
                    continue  # woken to set the corrections' timer, or by nothing to send
            self._wake = trio.Event()
            if self._closing and not (self._queue or self._fixes):
                return
            if self._side.alone and cluster.live_processes() != self._share.count:
                self._share = Share.unranked(cluster.live_processes())
            await self._call(cluster)

    async def _call(self, cluster: ClusterLink) -> None:
        asks, self._queue = self._queue, []
        fixes, self._fixes = self._fixes, []
        gap = self._side.gap.take()
        order: dict[str, int] = {}
        for window_id in [a.window for a in asks] + [f[0] for f in fixes] + sorted(gap.windows()):
            order.setdefault(window_id, len(order))
        if self._side.restoring:
            for window_id in sorted(self._side.mine.windows()):
                order.setdefault(window_id, len(order))
        for ask in asks:
            self._limits_seen[ask.window] = ask.limit
        ids = list(order)
        sent = trio.current_time()
        adds, restore = self._side.replays(gap, ids, self._side.redis_ms(sent))
        windows = []
        for window_id in ids:
            key_id, name = window_id.rsplit("/", 1)
            windows.append((key_id, name, self._limits_seen.get(window_id, 1)))
        batch = KeysBatch(
            windows=tuple(windows),
            fixes=tuple((order[w], at, delta) for w, at, delta in fixes),
            adds=adds,
            restore=restore,
            admissions=tuple((order[a.window], a.amount) for a in asks),
            epoch=self._side.epoch,
        )
        try:
            state = await cluster.coordinator.keys(batch)
        except CoordinatorError as exc:
            now = trio.current_time()
            self._go_alone(cluster, str(exc), now)
            self._side.gap.merge(gap)  # not delivered: keep for later
            for ask in asks:
                ask.retry_after = self._admit_locally(ask.window, ask.limit, ask.amount, now)
                ask.done.set()
            return
        restored = bool(batch.restore)
        if self._side.answered(
            redis_now_ms=state.now_ms, epoch=state.epoch, fresh=state.fresh, restored=restored, sent=sent
        ):
            self._wake.set()
        for window_id, view in zip(ids, state.windows, strict=True):
            self._views[window_id] = view
        if len(self._views) >= self._views_prune_at:
            self._prune_views(state.now_ms)
            self._views_prune_at = max(_PRUNE_AT, 2 * len(self._views))
        for ask, answer in zip(asks, state.answers, strict=True):
            if answer is None:
                ask.shared_at = state.now_ms
                self._side.mine.add(ask.window, state.now_ms, ask.amount)
            else:
                ask.retry_after = _SPAN if answer < 0 else answer / 1000
            ask.done.set()

    def _go_alone(self, cluster: ClusterLink, reason: str, now: float) -> None:
        """Decide locally on this process's share, starting from what each shared window held
        when last read (as if added at the latest moment it was: it leaves no earlier than it
        really does)."""
        if not self._side.go_alone(reason):
            return
        self._share = Share.unranked(cluster.live_processes())
        self._local = {}
        for window_id, (used, clear_ms) in self._views.items():
            limit = self._limits_seen.get(window_id)
            if limit and used > 0:
                window = self._local_window(window_id, limit, now)
                window.add(min(self._side.local_time(clear_ms) - _SPAN, now), used)


# The deployment window behind each key dimension, for fleet_views.
_FLEET_WINDOWS = {"requests": "rpm", "tokens": "tpm"}


def fleet_views(snapshots: Sequence[DeploymentSnapshot], now: float) -> dict[str, LimitView]:
    """A model's room per minute over all its enabled deployments (``snapshots``): the sum of
    their limits and of what is left of them, back to full once every one is. A dimension
    some deployment does not limit is left out (the model has no limit on it)."""
    views = {}
    for name, window_name in _FLEET_WINDOWS.items():
        windows = [w for snap in snapshots if (w := snap.windows.get(window_name)) is not None]
        if not windows or len(windows) < len(snapshots):
            continue
        views[name] = LimitView(
            limit=sum(w.limit for w in windows),
            remaining=sum(max(w.limit - w.used, 0) for w in windows),
            reset_seconds=max(max(w.clear_at for w in windows) - now, 0.0),
        )
    return views


def format_reset(seconds: float) -> str:
    """OpenAI's reset duration format: ``"20ms"``, ``"1s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
