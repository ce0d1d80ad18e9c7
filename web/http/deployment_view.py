"""One deployment's published state as operators see it: ``GET /admin/deployments`` and the
operator console's deployments feed (``/admin/data/deployments``) both render it here."""

from __future__ import annotations

from typing import Any

from omixa.engine.deployment import DeploymentActor


def deployment_view(actor: DeploymentActor, now: float) -> dict[str, Any]:
    snap = actor.snapshot
    cooldown = snap.available_at - now
    return {
        "name": snap.name,
        "model": snap.model,
        "provider": actor.config.provider,
        "endpoint": actor.config.endpoint or None,
        "region": snap.region,
        "enabled": snap.enabled,
        "weight": snap.weight,
        "health": snap.health,
        "cooldown_seconds": round(cooldown, 3) if cooldown > 0 else 0,
        "in_flight": snap.in_flight,
        "fleet_in_flight": snap.fleet_in_flight,
        "requests": snap.requests,
        "failures": snap.failures,
        "tokens_used": snap.tokens_used,
        "windows": {name: {"used": view.used, "limit": view.limit} for name, view in snap.windows.items()},
        "latency_ms": round(snap.latency_s * 1000, 1) if snap.latency_s is not None else None,
        "last_outcome": snap.last_outcome,
        "last_error": snap.last_error,
    }
