"""Per-key rate limits: requests and tokens per minute for each developer key.

Each key has a sliding minute window of requests and one of tokens (the same bucketed
windows as deployments, :mod:`engine.windows`). A model call counts one request as soon as
its key is known, before its body is read (:meth:`KeyLimiter.admit_request`), so every
call counts, also one refused later for a bad body or an empty wallet. Once its estimate
is known (prompt + output cap, as the deployments count it), that estimate counts against
the tokens window (:meth:`KeyLimiter.admit_tokens`); when the call ends, the estimate is
replaced by the real usage. Over either limit the call gets ``429 rate_limited`` with
``Retry-After`` before anything is held or sent; a call whose estimate alone exceeds the
tokens limit could never fit, so it gets 400 ``invalid_request`` instead (a client retrying a
429 would retry it for nothing).

Limits come from the key (``omixa key create --rpm/--tpm``) or else ``[limits] key_rpm`` /
``key_tpm``; 0 means unlimited. Only model calls count (chat completions, embeddings,
images, the playground), not reads such as ``/wallet``.

Not an actor: every method is synchronous, so under trio's cooperative scheduling a check
and its update are one atomic step, with no mailbox hop on the hot path. The state is per
process (like deployments' windows); idle keys' windows are dropped once they are empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from omixa.engine.config import LimitsConfig
from omixa.engine.deployment import DeploymentSnapshot
from omixa.engine.errors import InvalidRequest, RateLimited
from omixa.engine.windows import SlidingWindow, minute_window
from omixa.storage import ApiKeyRecord

# Past this many tracked keys, keys whose windows are empty are forgotten.
_PRUNE_AT = 10_000


@attrs.frozen(kw_only=True)
class LimitView:
    """One dimension's state for the ``x-ratelimit-*`` headers."""

    limit: int
    remaining: int
    reset_seconds: float  # until the window is back to its full limit


@attrs.define
class _KeyWindows:
    requests: SlidingWindow | None
    tokens: SlidingWindow | None


class KeyLimiter:
    def __init__(self, config: LimitsConfig) -> None:
        self._config = config
        self._keys: dict[str, _KeyWindows] = {}

    def _limits(self, key: ApiKeyRecord) -> tuple[int, int]:
        rpm = key.rpm if key.rpm is not None else self._config.key_rpm
        tpm = key.tpm if key.tpm is not None else self._config.key_tpm
        return rpm, tpm

    def _windows(self, key: ApiKeyRecord, now: float) -> _KeyWindows:
        windows = self._keys.get(key.id)
        rpm, tpm = self._limits(key)
        if windows is None or _limit(windows.requests) != rpm or _limit(windows.tokens) != tpm:
            if len(self._keys) >= _PRUNE_AT:
                self._prune(now)
            windows = _KeyWindows(
                requests=minute_window(rpm) if rpm else None,
                tokens=minute_window(tpm) if tpm else None,
            )
            self._keys[key.id] = windows
        return windows

    def admit_request(self, key: ApiKeyRecord, now: float) -> None:
        """Count one model call against the key's requests per minute, or refuse it. Called
        before the request's body is read, so every call counts, whatever becomes of it.

        Errors: RateLimited with ``retry_after`` (seconds until one more fits).
        """
        window = self._windows(key, now).requests
        if window is None:
            return
        if not window.fits(now, 1):
            raise RateLimited(
                "Developer key exceeded rate limits (requests per minute).",
                retry_after=_wait(window, now, 1),
            )
        window.add(now, 1)

    def admit_tokens(self, key: ApiKeyRecord, estimated_tokens: int, now: float) -> None:
        """Count a call's ``estimated_tokens`` (prompt + output cap) against the key's tokens
        per minute, or refuse it.

        Errors: InvalidRequest when the estimate alone exceeds the limit (it can never fit:
        a retry would fail the same way); RateLimited with ``retry_after`` otherwise.
        """
        window = self._windows(key, now).tokens
        if window is None:
            return
        if estimated_tokens > window.limit:
            raise InvalidRequest(
                f"This request's {estimated_tokens} estimated tokens (prompt and output cap) exceed "
                f"the key's limit of {window.limit} tokens per minute; lower max_tokens or the prompt."
            )
        if not window.fits(now, estimated_tokens):
            raise RateLimited(
                "Developer key exceeded rate limits (tokens per minute).",
                retry_after=_wait(window, now, estimated_tokens),
            )
        window.add(now, estimated_tokens)

    def settle(self, key_id: str, admitted_at: float, estimated_tokens: int, used_tokens: int) -> None:
        """Replace a call's estimate by the tokens it really used."""
        windows = self._keys.get(key_id)
        if windows is not None and windows.tokens is not None:
            windows.tokens.adjust(admitted_at, used_tokens - estimated_tokens)

    def views(self, key: ApiKeyRecord, now: float) -> dict[str, LimitView]:
        """The key's ``requests`` and ``tokens`` state (unlimited dimensions left out)."""
        windows = self._windows(key, now)
        views = {}
        for name, window in (("requests", windows.requests), ("tokens", windows.tokens)):
            if window is None:
                continue
            views[name] = LimitView(
                limit=window.limit,
                remaining=max(window.limit - window.used(now), 0),
                reset_seconds=max(window.clear_at(now) - now, 0.0),
            )
        return views

    def _prune(self, now: float) -> None:
        for key_id in [k for k, w in self._keys.items() if _empty(w, now)]:
            del self._keys[key_id]


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


def _wait(window: SlidingWindow, now: float, amount: int) -> float:
    at = window.room_at(now, amount)
    assert at is not None  # amount <= limit
    return at - now


def _limit(window: SlidingWindow | None) -> int:
    return window.limit if window is not None else 0


def _empty(windows: _KeyWindows, now: float) -> bool:
    return all(w is None or w.used(now) == 0 for w in (windows.requests, windows.tokens))


def format_reset(seconds: float) -> str:
    """OpenAI's reset duration format: ``"20ms"``, ``"1s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
