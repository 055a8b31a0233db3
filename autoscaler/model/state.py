"""An endpoint's lifecycle states, as the wire format spells them, and its status."""

import enum
from dataclasses import dataclass


class State(enum.StrEnum):
    """The state of a whole endpoint, as the wire's `status.state` spells it: derived by its owner
    from the intent and the Phases of its slots (owner.status). The proxy gets its own share of it,
    a RouteState: PAUSED when paused, FAILED when failed with no replica ready, SERVING otherwise."""

    PENDING = "pending"
    INITIALIZING = "initializing"
    UPDATING = "updating"
    UPDATE_FAILED = "updateFailed"
    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    SCALED_TO_ZERO = "scaledToZero"


@dataclass(frozen=True)
class Status:
    """An endpoint's state as users see it, with the replica counts of its wire status."""

    state: State
    message: str
    ready: int
    target: int
    # What a request would wake now: "warm" (a replica ready), "sleeping" (engines asleep, woken
    # without a 503), "parked" (containers stopped and kept) or "cold" (none); None while no
    # replica has yet been ready (pending, initializing, failed).
    tier: str | None = None
