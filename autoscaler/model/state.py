"""An endpoint's lifecycle states, as the wire format spells them, and its status."""

import enum
from dataclasses import dataclass


class State(enum.StrEnum):
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
