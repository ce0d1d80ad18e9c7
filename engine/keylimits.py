"""Per-key rate limits: requests and tokens per minute for each developer key.

Each key has a sliding minute window of requests and one of tokens (the same bucketed
windows as deployments, :mod:`engine.windows`). A model call is admitted only if both have
room: one request, and its estimated tokens (prompt + output cap), as the deployments count
them; when it ends, the token window is corrected with the real usage. Over the limit the
call gets ``429 rate_limited`` with ``Retry-After`` before anything is held or sent.

Limits come from the key (``omixa key create --rpm/--tpm``) or else ``[limits] key_rpm`` /
``key_tpm``; 0 means unlimited. Only model calls count (chat completions), not reads such
as ``/wallet``.

Not an actor: every method is synchronous, so under trio's cooperative scheduling a check
and its update are one atomic step, with no mailbox hop on the hot path. The state is per
process (like deployments' windows); idle keys' windows are dropped once they are empty.
"""

from __future__ import annotations

import math

import attrs

from engine.config import LimitsConfig
from engine.errors import RateLimited
from engine.windows import SlidingWindow, minute_window
from storage import ApiKeyRecord

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

    def admit(self, key: ApiKeyRecord, estimated_tokens: int, now: float) -> None:
        """Count one model call of ``estimated_tokens`` against the key, or refuse it.

        Errors: RateLimited with ``retry_after`` (seconds until it would fit).
        """
        windows = self._windows(key, now)
        waits = []
        for window, amount, what in (
            (windows.requests, 1, "requests"),
            (windows.tokens, estimated_tokens, "tokens"),
        ):
            if window is not None and not window.fits(now, amount):
                at = window.room_at(now, amount)
                if at is None:
                    raise RateLimited(
                        f"This request's {estimated_tokens} estimated tokens exceed the key's "
                        f"limit of {window.limit} tokens per minute; lower max_tokens."
                    )
                waits.append((at - now, what))
        if waits:
            wait, what = max(waits)
            raise RateLimited(f"Developer key exceeded rate limits ({what} per minute).", retry_after=wait)
        if windows.requests is not None:
            windows.requests.add(now, 1)
        if windows.tokens is not None:
            windows.tokens.add(now, estimated_tokens)

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
            used = window.used(now)
            # Back to the full limit once everything now in the window has left it.
            reset = window.room_at(now, window.limit) if used else now
            views[name] = LimitView(
                limit=window.limit,
                remaining=max(window.limit - used, 0),
                reset_seconds=max((reset if reset is not None else now) - now, 0.0),
            )
        return views

    def _prune(self, now: float) -> None:
        for key_id in [k for k, w in self._keys.items() if _empty(w, now)]:
            del self._keys[key_id]


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
