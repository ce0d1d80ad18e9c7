"""What a deployment actor takes and gives: its messages, the slot it grants, a refusal, and the
snapshot the router and operators read (see :mod:`omixa.engine.deployment`)."""

from __future__ import annotations

import attrs

from omixa.engine.config import DeploymentConfig
from omixa.engine.errors import OmixaError
from omixa.engine.mailbox import Reply
from omixa.engine.upstream import Provider, Usage


@attrs.frozen(kw_only=True)
class Slot:
    """Permission to send one request to a deployment."""

    id: int
    deployment: str
    estimated_tokens: int
    admitted_at: float
    shared_at: int | None = None  # Redis's clock (ms) when the shared windows admitted it
    probe: bool = False  # the fleet's one half-open probe


@attrs.frozen(kw_only=True)
class Refused:
    reason: str  # "disabled", "cooling", "open", "probing", "rpm", "tpm", "hourly_tokens", "too_large"
    retry_after: float | None = None  # seconds until it may have room; None: never


@attrs.frozen(kw_only=True)
class Acquire:
    request_id: str
    estimated_tokens: int
    reply: Reply[Slot | Refused]


@attrs.frozen(kw_only=True)
class Finish:
    """The request (or attempt) that held ``slot`` is over.

    ``usage`` is the real usage when known; ``outcome`` is "ok" or the status recorded;
    ``failure`` the upstream's error, when the upstream failed (it drives health).
    """

    slot: Slot
    usage: Usage | None
    outcome: str
    latency_s: float
    failure: OmixaError | None = None


@attrs.frozen(kw_only=True)
class Retune:
    """New settings for the same deployment; ``provider`` when the adapter must change."""

    config: DeploymentConfig
    provider: Provider | None
    reply: Reply[None]


@attrs.frozen(kw_only=True)
class WindowView:
    used: int
    limit: int
    clear_at: float = 0.0  # trio time when everything now counted will have left the window


@attrs.frozen(kw_only=True)
class DeploymentSnapshot:
    """What the router and operators may read; only the actor writes it."""

    name: str
    model: str
    region: str | None
    weight: float
    enabled: bool
    in_flight: int = 0  # in this process
    fleet_in_flight: int = 0  # in every process (with [cluster] redis_url; else in_flight)
    requests: int = 0
    failures: int = 0
    tokens_used: int = 0
    cooldowns: int = 0  # 429s that cooled it down (this process's)
    breaker_opens: int = 0  # times this process saw its breaker open
    health: str = "closed"  # closed, cooling, open, half_open
    available_at: float = 0.0  # trio time from which health lets requests through
    room: float = 1.0  # smallest remaining fraction over the windows (1.0: no limits)
    windows: dict[str, WindowView] = attrs.field(factory=dict)
    last_outcome: str | None = None
    last_error: str | None = None
    latency_s: float | None = None  # moving average of successful requests
