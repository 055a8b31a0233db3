"""What arrives in an owner's inbox (`Owner.post`), and the failure an owner persists.

Each message is a frozen dataclass; only `Owner.step()` reads them. `Message` is their union.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoscaler.model.intent import Intent
from engines.runtime import ReplicaInfo


@dataclass(frozen=True)
class Failure:
    """A revision that failed to start MAX_START_FAILURES times, and why: persisted, so that a
    restart neither retries it nor forgets that the revision before it is the one serving."""

    revision: int
    error: str


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewIntent:
    intent: Intent
    resumed: bool = False  # a user's resume: clears a failure and wakes the endpoint


@dataclass(frozen=True)
class Wake:
    """A client request found no ready replica; `at`: when the wake reached the controller."""

    at: float | None = None


@dataclass(frozen=True)
class Recommend:
    replicas: int
    reason: str = ""
    beyond_capacity: int | None = None  # replicas wanted when capacity capped the recommendation
    sleep: bool = False  # idle for sleepAfter: the engines may sleep


@dataclass(frozen=True)
class Slept:
    """A sleep ended: the engine is asleep, or not (`error`, or `aborted` for a request first)."""

    id: str
    error: str | None = None
    aborted: bool = False


@dataclass(frozen=True)
class Awoke:
    """A sleeping replica's wake ended: it answers again, or not (`error`)."""

    id: str
    error: str | None
    marks: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Parked:
    """A park ended: the container is stopped and kept, or not (`error`)."""

    id: str
    error: str | None = None


@dataclass(frozen=True)
class SleepSeen:
    """What an engine that sleeps by itself said when asked whether it is asleep."""

    id: str
    asleep: bool | None


@dataclass(frozen=True)
class Progress:
    id: str
    message: str


@dataclass(frozen=True)
class Launched:
    id: str
    info: ReplicaInfo
    marks: tuple[tuple[str, float], ...] = ()  # the launch's points in time (wakes.py), "ready" last


@dataclass(frozen=True)
class LaunchEnded:
    """A launch that did not produce a ready replica: it failed (`error`) or was cancelled."""

    id: str
    error: str | None
    removed: bool  # its container is gone (or was never made)


@dataclass(frozen=True)
class DrainDone:
    id: str


@dataclass(frozen=True)
class Stopped:
    id: str


@dataclass(frozen=True)
class StopFailed:
    id: str
    error: str


@dataclass(frozen=True)
class Died:
    id: str
    exit_code: int | None


@dataclass(frozen=True)
class Liveness:
    id: str
    ok: bool


@dataclass(frozen=True)
class Verified:
    ok: bool


@dataclass(frozen=True)
class Delete:
    pass


@dataclass(frozen=True)
class Adopted:
    """After a restart: a running, healthy container of the current revision or of one before it
    (a roll under way, a failed update), GPUs already held; or, `parked`, a stopped container of
    the current revision of an endpoint at zero."""

    info: ReplicaInfo
    parked: bool = False


Message = (
    NewIntent | Wake | Recommend | Progress | Launched | LaunchEnded | DrainDone | Stopped | StopFailed
    | Died | Liveness | Verified | Delete | Adopted | Slept | Awoke | Parked | SleepSeen
)
