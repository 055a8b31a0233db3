"""An endpoint's lifecycle states, as the wire format spells them (HF-API.md §7)."""

import enum


class State(enum.StrEnum):
    PENDING = "pending"
    INITIALIZING = "initializing"
    UPDATING = "updating"
    UPDATE_FAILED = "updateFailed"
    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    SCALED_TO_ZERO = "scaledToZero"
