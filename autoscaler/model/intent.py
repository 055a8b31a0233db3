"""What people declared for an endpoint (`Intent`), the soft and effective state its owner keeps
beside it (`Signals`), and the one rule that turns both into a replica count: `wanted()`.

Intent is written only by the management API, under the store's generation check. Signals are
posted to the endpoint's owner (recommendations by the scaler, wakes by the proxy) and never
written over the intent. Two of them are *effective* state that the owner persists, so that a
restart or an unrelated update never changes how many replicas run: when the endpoint was last
woken, and when it went to zero for being idle.

Times here are wall-clock seconds (they are persisted and compared across restarts); the owner
makes sure that a wake it processes after a scale-to-zero is later than it, whatever the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.runtime import EndpointKey
from proxy.core.control import AuthType
from proxy.core.engine_routes import EngineKind


@dataclass(frozen=True)
class Intent:
    key: EndpointKey
    uid: str  # this incarnation of the endpoint: a re-create with the same name gets a new one
    generation: int  # bumped by every API write; a stale intent never replaces a newer one
    revision: int  # bumped by changes that need new containers (model, image, hardware, env)
    auth: AuthType
    health_route: str
    min_replicas: int
    max_replicas: int
    paused: bool = False
    zeroed_at: float | None = None  # a user's scale-to-zero; holds until a client request after it
    domain: str | None = None
    engine: EngineKind = EngineKind.OTHER  # its control routes are closed in the proxy
    spec: Any = None  # the endpoint's full spec, read by the launcher only


@dataclass(frozen=True)
class Signals:
    recommendation: int | None = None  # the scaler's latest; None until it has spoken
    woken_at: float | None = None  # effective: the last wake (a client request, or resume)
    idle_at: float | None = None  # effective: went to zero after scaleToZeroTimeout idle


def asleep_since(intent: Intent, signals: Signals) -> float | None:
    """When the endpoint went to zero (a user's scale-to-zero, or an idle scale-down with min 0)
    if no wake has followed; None while it is awake. Each return to zero gives a new value, so
    the proxy re-arms its wake on it: a request after this time must wake the endpoint."""
    since = [t for t in (intent.zeroed_at, signals.idle_at if intent.min_replicas == 0 else None) if t is not None]
    if not since or (signals.woken_at is not None and signals.woken_at > max(since)):
        return None
    return max(since)


def asleep(intent: Intent, signals: Signals) -> bool:
    """At zero until woken: after a user's scale-to-zero, or an idle scale-down (min 0 only),
    that no wake has followed."""
    return asleep_since(intent, signals) is not None


def wanted(intent: Intent, signals: Signals) -> int:
    """How many replicas of the current revision the endpoint should have now.

    0 while paused or asleep. Otherwise the scaler's recommendation within [max(min, 1), max]; before
    the scaler has spoken (a new endpoint, or just after a restart), the floor.
    """
    if intent.paused or asleep(intent, signals):
        return 0
    floor = max(intent.min_replicas, 1)
    recommended = signals.recommendation if signals.recommendation is not None else floor
    return min(max(recommended, floor), intent.max_replicas)
