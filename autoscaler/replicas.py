"""Each replica's timeline, as the reference's replica view shows it: from `pending` through
`initializing` and `running` to `draining` and `stopped` (or `failed`), with when and why.

Written by the endpoint's owner at each transition, read by `GET …/replica`. Stopped replicas
stay listed for `KEEP_STOPPED_S` (24 h), at most `MAX_STOPPED` of them per endpoint.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

KEEP_STOPPED_S = 24 * 3600.0
# Enough for a day of churn on a busy endpoint; a crash-looping one keeps its latest.
MAX_STOPPED = 200


class ReplicaState(enum.StrEnum):
    PENDING = "pending"  # wanted, not yet placed or started
    INITIALIZING = "initializing"  # its container is being made and loads the model
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


DONE = (ReplicaState.STOPPED, ReplicaState.FAILED)


@dataclass
class ReplicaRecord:
    id: str
    revision: int
    created_at: float  # wall-clock seconds
    gpus: tuple[str, ...] = ()
    state: ReplicaState = ReplicaState.PENDING
    ready_at: float | None = None
    stopped_at: float | None = None
    exit_code: int | None = None
    message: str = ""
    timeline: list[tuple[ReplicaState, float]] = field(default_factory=list)


class ReplicaHistory:
    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        self._records: dict[str, ReplicaRecord] = {}

    def started(self, replica_id: str, revision: int, gpus: tuple[str, ...] = (), *, running: bool = False) -> None:
        now = self._wall()
        record = self._records[replica_id] = ReplicaRecord(replica_id, revision, now, gpus)
        record.timeline.append((ReplicaState.PENDING, now))
        if running:  # adopted after a restart: already serving
            self.moved(replica_id, ReplicaState.RUNNING)

    def moved(self, replica_id: str, state: ReplicaState, message: str | None = None,
              exit_code: int | None = None) -> None:
        record = self._records.get(replica_id)
        if record is None or record.state in DONE:
            return
        now = self._wall()
        if message is not None:
            record.message = message
        if exit_code is not None:
            record.exit_code = exit_code
        if state is record.state:
            return
        record.state = state
        record.timeline.append((state, now))
        if state is ReplicaState.RUNNING and record.ready_at is None:
            record.ready_at = now
        if state in DONE:
            record.stopped_at = now
            self._prune(now)

    def items(self) -> list[ReplicaRecord]:
        """Live replicas and those stopped in the last 24 h, oldest first."""
        self._prune(self._wall())
        return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))

    def _prune(self, now: float) -> None:
        done = sorted((r for r in self._records.values() if r.state in DONE), key=lambda r: r.stopped_at)
        for i, record in enumerate(done):
            if now - record.stopped_at > KEEP_STOPPED_S or len(done) - i > MAX_STOPPED:
                del self._records[record.id]
