"""Each replica's timeline, as the reference's replica view shows it: from `pending` through
`initializing` and `running` to `draining` and `stopped` (or `failed`), with when and why.

Written by the endpoint's owner at each transition, read by `GET …/replica`; each change goes to
`on_change` too (the journal keeps it in the store, so a restart starts from what was kept).
Stopped replicas stay listed for `KEEP_STOPPED_S` (24 h), at most `MAX_STOPPED` of them per
endpoint; a replica's timeline keeps its first entry and its latest `MAX_TIMELINE - 1`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

KEEP_STOPPED_S = 24 * 3600.0
# Enough for a day of churn on a busy endpoint; a crash-looping one keeps its latest.
MAX_STOPPED = 200
# A replica moves through a handful of states; one taken out of rotation and back again and again
# (draining, then wanted again) keeps only its latest moves.
MAX_TIMELINE = 50


class ReplicaState(enum.StrEnum):
    """The state of one replica on its timeline, as users see it (`GET …/replica`): PENDING before
    its slot is placed, then its slot's Phase (owner.slot_state), then STOPPED or FAILED (DONE)."""

    PENDING = "pending"  # wanted, not yet placed or started
    INITIALIZING = "initializing"  # its container is being made and loads the model
    RUNNING = "running"
    SLEEPING = "sleeping"  # its engine asleep (model memory released); the next request wakes it
    PARKED = "parked"  # its container stopped and kept; a wake starts it again
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


def to_json(record: ReplicaRecord) -> dict[str, Any]:
    return {"id": record.id, "revision": record.revision, "created_at": record.created_at, "gpus": list(record.gpus),
            "state": record.state.value, "ready_at": record.ready_at, "stopped_at": record.stopped_at,
            "exit_code": record.exit_code, "message": record.message,
            "timeline": [[state.value, at] for state, at in record.timeline]}


def from_json(data: dict[str, Any]) -> ReplicaRecord:
    return ReplicaRecord(
        data["id"], data["revision"], data["created_at"], tuple(data["gpus"]), ReplicaState(data["state"]),
        data["ready_at"], data["stopped_at"], data["exit_code"], data["message"],
        [(ReplicaState(state), at) for state, at in data["timeline"]],
    )


class ReplicaHistory:
    def __init__(self, wall: Callable[[], float], records: Iterable[ReplicaRecord] = (),
                 on_change: Callable[[ReplicaRecord], None] | None = None) -> None:
        """`records`: what was kept before a restart; `on_change(record)` after every change."""
        self._wall = wall
        self._records: dict[str, ReplicaRecord] = {r.id: r for r in records}
        self._on_change = on_change or (lambda record: None)

    def started(self, replica_id: str, revision: int, gpus: tuple[str, ...] = (), *, running: bool = False) -> None:
        known = self._records.get(replica_id)
        if running and known is not None and known.state not in DONE:  # adopted: its timeline goes on
            self.moved(replica_id, ReplicaState.RUNNING, "found running after endpointd restarted")
            return
        now = self._wall()
        record = self._records[replica_id] = ReplicaRecord(replica_id, revision, now, gpus)
        record.timeline.append((ReplicaState.PENDING, now))
        self._on_change(record)
        if running:  # adopted after a restart: already serving
            self.moved(replica_id, ReplicaState.RUNNING)

    def settle(self, live: Iterable[str]) -> None:
        """After a restart's adoption: a replica kept from before that is neither done nor `live`
        (adopted) was stopped by the restart."""
        live = set(live)
        for record in list(self._records.values()):
            if record.state not in DONE and record.id not in live:
                self.moved(record.id, ReplicaState.STOPPED, "endpointd restarted and did not keep it")

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
        if state is not record.state:
            record.state = state
            record.timeline.append((state, now))
            del record.timeline[1:-(MAX_TIMELINE - 1)]
            if state is ReplicaState.RUNNING and record.ready_at is None:
                record.ready_at = now
            if state in DONE:
                record.stopped_at = now
                self._prune(now)
        self._on_change(record)

    def items(self) -> list[ReplicaRecord]:
        """Live replicas and those stopped in the last 24 h, oldest first."""
        self._prune(self._wall())
        return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))

    def _prune(self, now: float) -> None:
        # A record reaches a DONE state only in `moved`, which sets its stopped_at.
        done = sorted(((r.stopped_at, r) for r in self._records.values() if r.state in DONE and r.stopped_at is not None),
                      key=lambda stopped: stopped[0])
        for i, (stopped_at, record) in enumerate(done):
            if now - stopped_at > KEEP_STOPPED_S or len(done) - i > MAX_STOPPED:
                del self._records[record.id]
