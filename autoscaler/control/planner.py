"""The pure planner: one endpoint's slots and wanted count in, the lifecycle actions out.

`plan(view)` reads nothing and changes nothing; the owner carries its actions out. It holds
these invariants, whatever the order of events that led to `view`:

- the containers of an endpoint — starting, ready, draining and stopping alike — never exceed
  `max + surge`, where the surge is 1 and only while a roll is under way: no action starts a
  replica when that count is reached (a lowered max is reached by draining, never by starting);
- a draining replica of the current revision is reclaimed before a new one is started;
- surplus replicas go starting ones first (their launch is cancelled), then sleeping ones, then
  the ready ones with the fewest requests in flight;
- a missing replica is a draining one reclaimed first, then a parked one started again, and only
  then a new one; parked containers hold nothing (stopped), so they count toward no limit;
- a roll keeps as many old replicas serving as the new revision lacks ready ones (all of them, for
  good, if the new revision fails to start); each new ready replica lets an old one go, which frees
  the room for the next new one; when capacity forbids the surge replica, it rolls by recreate:
  one old replica is drained to free what it holds, then the new one starts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    """The phase of one replica slot as the owner handles it: the planner's input, never shown.
    Users see it as the replica's ReplicaState (owner.slot_state): STARTING as initializing, READY
    as running, DRAINING and STOPPING as draining; a slot's end (stopped, failed) is a ReplicaState
    only, the slot being gone by then. Not the container's ContainerStatus: a STARTING slot's
    container may already be running while its engine loads the model."""

    STARTING = "starting"  # its launch task runs: artifacts, image, container, readiness
    READY = "ready"  # in the route table, taking requests
    DRAINING = "draining"  # out of the route table, finishing its requests; may be reclaimed
    STOPPING = "stopping"  # its container is being removed (or its launch cancelled)
    SLEEPING = "sleeping"  # out of the route table, its engine asleep (going to sleep, or waking)
    PARKING = "parking"  # its container is being stopped, to be kept
    PARKED = "parked"  # its container stopped and kept: a wake starts it again (Unpark)


SURGE = 1


@dataclass(frozen=True)
class SlotView:
    id: str
    revision: int
    phase: Phase
    load: int = 0  # requests in flight on it


@dataclass(frozen=True)
class View:
    revision: int  # the current revision
    wanted: int  # replicas of the current revision wanted now
    max_replicas: int
    slots: tuple[SlotView, ...]
    may_start: bool = True  # False while backing off after a failure, or once the revision failed
    failed: bool = False  # the current revision failed to start: the old one keeps serving
    free_capacity: int | None = None  # replicas that can still be placed (GPUs); None: unbounded


@dataclass(frozen=True)
class Start:
    count: int


@dataclass(frozen=True)
class Cancel:
    """Stop a starting replica: cancel its launch, whose cancellation removes its container."""

    id: str


@dataclass(frozen=True)
class Drain:
    id: str


@dataclass(frozen=True)
class Reclaim:
    """A draining replica takes requests again."""

    id: str


@dataclass(frozen=True)
class Unpark:
    """A parked replica of the current revision starts again."""

    id: str


Action = Start | Cancel | Drain | Reclaim | Unpark

LIVE = (Phase.STARTING, Phase.READY, Phase.SLEEPING)


def limit(view: View) -> int:
    """The most containers the endpoint may have when a start is considered."""
    rolling = any(s.revision != view.revision and s.phase not in (Phase.STOPPING, Phase.PARKING, Phase.PARKED)
                  for s in view.slots)
    return view.max_replicas + (SURGE if rolling else 0)


def _remove(slots: list[SlotView]) -> list[Action]:
    return [Cancel(s.id) if s.phase is Phase.STARTING else Drain(s.id) for s in slots]


def _victims(slots: list[SlotView], n: int) -> list[SlotView]:
    """Starting replicas first, then sleeping ones, then the ready ones with the fewest requests in flight."""
    return sorted(slots, key=lambda s: (s.phase is not Phase.STARTING, s.phase is Phase.READY, s.load, s.id))[:n]


def plan(view: View) -> list[Action]:
    live = [s for s in view.slots if s.phase in LIVE]
    current = [s for s in live if s.revision == view.revision]
    old = [s for s in live if s.revision != view.revision]
    actions: list[Action] = []

    if len(current) > view.wanted:
        actions += _remove(_victims(current, len(current) - view.wanted))
    missing = view.wanted - len(current)
    if missing > 0:
        reclaimable = [s for s in view.slots if s.phase is Phase.DRAINING and s.revision == view.revision]
        for slot in sorted(reclaimable, key=lambda s: s.id)[:missing]:
            actions.append(Reclaim(slot.id))
            missing -= 1
    if missing > 0 and view.may_start:
        room = limit(view) - sum(1 for s in view.slots if s.phase is not Phase.PARKED)
        capacity = missing if view.free_capacity is None else view.free_capacity
        count = started = max(0, min(missing, room, capacity))
        parked = sorted((s for s in view.slots if s.phase is Phase.PARKED and s.revision == view.revision),
                        key=lambda s: s.id)
        for slot in parked[:count]:
            actions.append(Unpark(slot.id))
        count -= min(count, len(parked))
        if count:
            actions.append(Start(count))
        busy = any(s.phase is Phase.STARTING for s in current) or any(
            s.phase in (Phase.DRAINING, Phase.STOPPING, Phase.PARKING) for s in view.slots  # already freeing something
        )
        if started == 0 and capacity <= 0 < room and old and not busy:
            # Recreate: the surge cannot be placed, so free what one old replica holds first.
            actions += _remove(_victims(old, 1))
            return actions

    # A roll: each new replica that is ready lets one old one go (starting ones first), so the
    # surge replica's room frees for the next new one; the old revision keeps serving what the
    # new one cannot yet, and all of it if the new revision failed to start.
    if old and not (view.failed and view.wanted > 0):
        ready_current = sum(1 for s in current if s.phase is Phase.READY)
        keep = max(0, view.wanted - ready_current)
        if len(old) > keep:
            actions += _remove(_victims(old, len(old) - keep))
    return actions
