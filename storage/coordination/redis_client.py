"""The Redis side of shared limits: one bounded call per batch, errors as CoordinatorError.

Calls go over trio's own sockets (:mod:`.connection`: redis-py's command serializer and
hiredis's reply parser). A call that outlives its bound is cancelled and its connection
closed; its batch may or may not have been applied, which the callers treat as not applied
(the safe side: at worst an admission is counted and not used).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from omixa.storage._common import public_caller
from omixa.storage.coordination.connection import RedisPool, RedisReplyError
from omixa.storage.coordination.scripts import DEPLOYMENT_BATCH, KEYS_BATCH

log = logging.getLogger("omixa.coordination")


class CoordinatorError(Exception):
    """Redis did not answer in time, refused, or answered something unusable."""


@attrs.frozen(kw_only=True)
class DeploymentBatch:
    """What one process sends for one deployment (see :mod:`.deployment_lua` for the meaning).

    ``windows``: (name, limit, span_ms, resolution_ms, counts_requests) per window; the others
    name windows by their index in it (0-based here).
    """

    windows: tuple[tuple[str, int, int, int, bool], ...]
    health: tuple[tuple[str, int], ...] = ()
    fixes: tuple[tuple[int, int, int], ...] = ()
    adds: tuple[tuple[int, int, int], ...] = ()
    restore: tuple[tuple[int, int, int], ...] = ()
    admissions: tuple[int, ...] = ()
    probe_lease_ms: int = 30_000
    epoch: str = ""
    instance: str = ""  # this process's name, for its requests in flight
    in_flight: int = 0  # this process's requests in flight on the deployment, before the batch
    stale_ms: int = 3_000  # a process that has not reported for this long no longer counts


@attrs.frozen(kw_only=True)
class DeploymentState:
    """Redis's answer: its clock, one answer per admission, each window's used amount and
    when it will be empty, and the health state with when it changes next (ms, Redis's clock).

    An answer is ``0`` (admitted), ``1`` (admitted as the half-open probe), or a
    ``(reason, retry_ms)`` refusal: reason "cooling", "open", "probing" or a window's name;
    ``retry_ms`` None when the amount can never fit.
    """

    now_ms: int
    answers: tuple[int | tuple[str, int | None], ...]
    windows: dict[str, tuple[int, int]]
    health: str
    health_until_ms: int
    epoch: str
    fresh: bool  # the epoch was not the batch's: the state the process knew was lost
    fleet_in_flight: int = 0  # requests in flight in every process, the batch's admissions included


@attrs.frozen(kw_only=True)
class KeysBatch:
    """What one process sends for developer keys' minute windows (requests and tokens).

    ``windows``: (key id, window name, limit) per window; the others name windows by their
    index in it (0-based). ``admissions``: (window, amount) to decide in order.
    """

    windows: tuple[tuple[str, str, int], ...]
    fixes: tuple[tuple[int, int, int], ...] = ()
    adds: tuple[tuple[int, int, int], ...] = ()
    restore: tuple[tuple[int, int, int], ...] = ()
    admissions: tuple[tuple[int, int], ...] = ()
    epoch: str = ""


@attrs.frozen(kw_only=True)
class KeysState:
    """Redis's answer: its clock (ms), per admission None (admitted) or the ms until it fits
    (-1: never), and each window's (used, clear_at_ms)."""

    now_ms: int
    answers: tuple[int | None, ...]
    windows: tuple[tuple[int, int], ...]
    epoch: str
    fresh: bool


_DEPLOYMENT_SHA = hashlib.sha1(DEPLOYMENT_BATCH.encode()).hexdigest()
_KEYS_SHA = hashlib.sha1(KEYS_BATCH.encode()).hexdigest()

# Developer keys' windows: requests or tokens per minute, in 1 s buckets.
KEY_SPAN_MS, KEY_RESOLUTION_MS = 60_000, 1_000


def _list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return value if isinstance(value, list) else []


class Coordinator:
    """One pool of Redis connections per process. Every call is bounded by ``timeout`` seconds.

    ``observe_call``, when set (the engine's metrics), is told each call's name (the public
    method: deployment, keys, claim, ping), whether Redis answered, and its duration."""

    observe_call: Callable[[str, bool, float], None] | None = None

    def __init__(self, pool: RedisPool, *, prefix: str, timeout: float, where: str) -> None:
        self._pool = pool
        self._prefix = prefix
        self._timeout = timeout
        self.where = where  # host:port/db, for logs (never the password)

    async def _call(self, *args: Any) -> Any:
        observe = self.observe_call
        if observe is None:
            return await self._send(*args)
        started, ok = time.perf_counter(), False
        try:
            answer = await self._send(*args)
            ok = True
            return answer
        finally:
            observe(public_caller(), ok, time.perf_counter() - started)

    async def _send(self, *args: Any) -> Any:
        with trio.move_on_after(self._timeout) as scope:
            try:
                async with self._pool.connection() as conn:
                    return await conn.call(*args)
            except (RedisReplyError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise CoordinatorError(f"redis: {exc or type(exc).__name__}") from exc
        assert scope.cancelled_caught
        raise CoordinatorError(f"redis: no answer within {self._timeout:g} s")

    async def _script(self, script: str, sha: str, keys: list[str], payload: str) -> Any:
        """EVALSHA, loading the script first if this Redis does not know it (a restart)."""
        try:
            return await self._call("EVALSHA", sha, len(keys), *keys, payload)
        except CoordinatorError as exc:
            if not (isinstance(exc.__cause__, RedisReplyError) and str(exc.__cause__).startswith("NOSCRIPT")):
                raise
        return await self._call("EVAL", script, len(keys), *keys, payload)

    async def ping(self) -> None:
        """Errors: CoordinatorError."""
        await self._call("PING")

    async def deployment(self, name: str, batch: DeploymentBatch) -> DeploymentState:
        """Apply ``batch`` to deployment ``name``'s shared state, atomically.

        Errors: CoordinatorError (Redis down, slow or failing); the batch may or may not have
        been applied then.
        """
        base = f"{self._prefix}:deployment:{{{name}}}"
        keys = [f"{base}:health", f"{base}:epoch", f"{base}:inflight"]
        for window in batch.windows:
            keys += [f"{base}:{window[0]}:buckets", f"{base}:{window[0]}:counts"]
        payload = json.dumps(
            {
                "w": [[limit, span, res, 1 if requests else 0] for _, limit, span, res, requests in batch.windows],
                "h": [list(event) for event in batch.health],
                "fix": [[k + 1, at, delta] for k, at, delta in batch.fixes],
                "add": [[k + 1, at, amount] for k, at, amount in batch.adds],
                "restore": [[k + 1, at, amount] for k, at, amount in batch.restore],
                "epoch": batch.epoch,
                "new_epoch": secrets.token_hex(8),
                "acq": list(batch.admissions),
                "lease": batch.probe_lease_ms,
                "inst": batch.instance,
                "infl": batch.in_flight,
                "stale": batch.stale_ms,
            },
            separators=(",", ":"),
        )
        raw = await self._script(DEPLOYMENT_BATCH, _DEPLOYMENT_SHA, keys, payload)
        try:
            data = json.loads(raw)
            names = [window[0] for window in batch.windows]
            answers: list[int | tuple[str, int | None]] = []
            for answer in _list(data["r"]):
                if isinstance(answer, list):
                    reason = answer[0] if isinstance(answer[0], str) else names[int(answer[0]) - 1]
                    retry = int(answer[1])
                    answers.append((reason, None if retry < 0 else retry))
                else:
                    answers.append(int(answer))
            views = _list(data["v"])
            return DeploymentState(
                now_ms=int(data["now"]),
                answers=tuple(answers),
                windows={name: (int(used), int(clear)) for name, (used, clear) in zip(names, views, strict=True)},
                health=str(data["hs"]),
                health_until_ms=int(data["hu"]),
                epoch=str(data["epoch"]),
                fresh=bool(data["fresh"]),
                fleet_in_flight=int(data["fin"]),
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise CoordinatorError(f"redis: unexpected answer {raw!r}") from exc

    async def claim(self, name: str, seconds: float) -> bool:
        """Record ``name`` for ``seconds`` unless it is recorded already; True if this call
        recorded it. Errors: CoordinatorError."""
        ms = max(1, int(seconds * 1000))
        return await self._call("SET", f"{self._prefix}:{name}", "1", "PX", ms, "NX") is not None

    async def keys(self, batch: KeysBatch) -> KeysState:
        """Apply ``batch`` to the developer keys' shared windows, atomically.

        Errors: CoordinatorError (the batch may or may not have been applied then).
        """
        keys = [f"{self._prefix}:keys:epoch"]
        for key_id, name, _ in batch.windows:
            base = f"{self._prefix}:key:{{{key_id}}}:{name}"
            keys += [f"{base}:buckets", f"{base}:counts"]
        payload = json.dumps(
            {
                "w": [[limit, KEY_SPAN_MS, KEY_RESOLUTION_MS, 0] for _, _, limit in batch.windows],
                "fix": [[k + 1, at, delta] for k, at, delta in batch.fixes],
                "add": [[k + 1, at, amount] for k, at, amount in batch.adds],
                "restore": [[k + 1, at, amount] for k, at, amount in batch.restore],
                "epoch": batch.epoch,
                "new_epoch": secrets.token_hex(8),
                "acq": [[k + 1, amount] for k, amount in batch.admissions],
            },
            separators=(",", ":"),
        )
        raw = await self._script(KEYS_BATCH, _KEYS_SHA, keys, payload)
        try:
            data = json.loads(raw)
            return KeysState(
                now_ms=int(data["now"]),
                answers=tuple(None if int(a) == 0 else int(a) for a in _list(data["r"])),
                windows=tuple((int(used), int(clear)) for used, clear in _list(data["v"])),
                epoch=str(data["epoch"]),
                fresh=bool(data["fresh"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CoordinatorError(f"redis: unexpected answer {raw!r}") from exc

    async def aclose(self) -> None:
        with trio.move_on_after(2, shield=True), contextlib.suppress(OSError):
            await self._pool.aclose()


def describe(url: str) -> str:
    """``host:port/db`` of a Redis URL, without credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"


@contextlib.asynccontextmanager
async def open_coordinator(url: str, *, prefix: str, timeout: float) -> AsyncIterator[Coordinator]:
    """A Redis client for ``url``; it connects on first use, so a Redis that is down at start
    only makes the first calls fail (and the gateway run on its shares until it answers).

    Errors: ValueError for a URL that is not ``redis://`` or ``rediss://``.
    """
    coordinator = Coordinator(RedisPool(url), prefix=prefix, timeout=timeout, where=describe(url))
    try:
        yield coordinator
    finally:
        await coordinator.aclose()
