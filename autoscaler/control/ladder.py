"""The idle ladder of an endpoint's owner: sleeping, then parked.

The idle ladder (sleepAfter, then scaleToZeroTimeout) runs in the owner: an idle replica's
engine is put to sleep (SLEEPING: out of the route table, its process and GPUs kept; a request
wakes it without a 503), or, for an engine that sleeps by itself (llama.cpp), only observed
asleep; at zero, drained replicas of the current revision are parked (their containers stopped
and kept) instead of removed, and a wake starts a parked one again before it creates a new one.

`IdleLadder` is a part of `Owner` (owner.py), kept here: its transitions run only from
`Owner.step()`, as every other change of a slot does, and its tasks report back by posting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from autoscaler.control.host import Host
from autoscaler.control.messages import Awoke, Message, Parked, SleepSeen, Slept
from autoscaler.control.planner import Phase
from autoscaler.control.slot import Slot, StepResult
from autoscaler.model.intent import Intent, Signals, asleep
from autoscaler.model.timelines import ReplicaHistory, ReplicaState
from engines.runtime import ReplicaInfo, RuntimeFailure

log = logging.getLogger("endpointd.controller")

# A drain checks this often whether its replica's last request has finished.
DRAIN_POLL_S = 0.05


class IdleLadder:
    """The idle ladder's transitions and tasks; `Owner` inherits them, and owns what they use."""

    host: Host
    intent: Intent
    signals: Signals
    key: str
    slots: dict[str, Slot]
    deleting: bool
    verified: bool
    history: ReplicaHistory
    _wake_asked: float | None
    _woke: tuple[float, tuple[tuple[str, float], ...], str] | None
    _observing: set[str]
    post: Callable[[Message], None]
    slots_in: Callable[..., list[Slot]]
    _event: Callable[..., None]
    _stop: Callable[[Slot, float], None]
    _launch: Callable[[Slot, Intent], Coroutine[Any, Any, None]]

    # --- the idle ladder: sleeping, parked (only from step) -----------------------------

    def _idle(self, sleep: bool) -> None:
        """The scaler's word on idleness: `sleep` once idle for sleepAfter, else busy again."""
        if not sleep:
            for slot in self.slots.values():
                slot.sleep_failed = False
                if slot.self_asleep:
                    slot.self_asleep = False
                    self.history.moved(slot.id, ReplicaState.RUNNING, "busy again: its engine woke by itself")
                    self._event("replica_awake", "busy again: its engine woke by itself for the request", slot)
            return
        if self.deleting or self.intent.paused or not self.verified:
            return  # not before its route answered through the proxy once: that is what says it serves
        current = [s for s in self.slots_in(Phase.READY) if s.revision == self.intent.revision and s.info is not None]
        if len(current) != len(self.slots_in(Phase.STARTING, Phase.READY)):
            return  # starting or rolling: not idle in the sense that matters
        if self.host.launcher.sleeps_by_itself(self.intent):
            for slot in current:  # it sleeps on its own timer: ask whether it does yet
                if not slot.self_asleep and slot.id not in self._observing:
                    self._observing.add(slot.id)
                    self.host.spawn(self._observe(slot.id, slot.info))
            return
        in_flight = self.host.in_flight(self.key)
        for slot in current:
            if not slot.sleep_failed and in_flight.get(slot.id, 0) == 0:
                self._put_to_sleep(slot)

    def _put_to_sleep(self, slot: Slot) -> None:
        slot.phase = Phase.SLEEPING
        self.history.moved(slot.id, ReplicaState.SLEEPING, "idle for sleepAfter: its engine releases its model memory")
        self._event("replica_sleeping", "idle for sleepAfter: out of the route table, its engine is put to sleep "
                    "(its GPUs stay assigned, so it can always wake)", slot)
        slot.task = self.host.spawn(self._sleep(slot.id, slot.info))

    def _slept(self, slot: Slot, error: str | None, aborted: bool) -> None:
        slot.task = None
        if slot.phase is not Phase.SLEEPING:
            return  # drained or replaced meanwhile
        if error is not None or aborted:
            slot.phase = Phase.READY
            if error is not None:
                slot.sleep_failed = True
                log.warning("replica %s of %s did not go to sleep: %s", slot.id, self.key, error)
                self._event("replica_sleep_failed", f"its engine did not go to sleep: {error}; it stays awake", slot)
            self.history.moved(slot.id, ReplicaState.RUNNING, "stays awake" + (f": {error}" if error else
                                                                                ": a request came first"))
            if self._wake_asked is not None:  # the wake that stopped it is answered: nothing slept
                self._woke, self._wake_asked = (self._wake_asked, (), "sleeping"), None
            return
        self._event("replica_asleep", "its engine is asleep: the next request wakes it", slot)
        if slot.rouse:
            slot.rouse = False
            self._rouse(slot)

    def _rouse(self, slot: Slot) -> None:
        """Wake a sleeping replica (once its sleep has ended, if it is still going to sleep)."""
        if slot.task is not None:
            slot.rouse = True
            return
        self._event("replica_waking", "a request arrived: its engine is woken", slot)
        slot.task = self.host.spawn(self._wake_engine(slot.id, slot.info))

    def _awoke(self, slot: Slot, error: str | None, marks: tuple[tuple[str, float], ...]) -> None:
        slot.task = None
        if slot.phase is not Phase.SLEEPING:
            return
        if error is not None:
            reason = f"its engine did not wake: {error}; replacing it"
            self._event("replica_wake_failed", reason, slot)
            self.history.moved(slot.id, ReplicaState.SLEEPING, reason)
            self._stop(slot, 0.0)
            return
        slot.phase = Phase.READY
        self.history.moved(slot.id, ReplicaState.RUNNING, "woke: its engine answers again")
        if self._wake_asked is not None:
            self._woke, self._wake_asked = (self._wake_asked, marks, "sleeping"), None  # measured once published

    def _seen_asleep(self, slot: Slot, asleep_now: bool | None) -> None:
        if asleep_now and slot.phase is Phase.READY and not slot.self_asleep:
            slot.self_asleep = True
            self.history.moved(slot.id, ReplicaState.SLEEPING, "idle: its engine released its model memory by itself; "
                               "the next request wakes it")
            self._event("replica_asleep", "its engine put itself to sleep (its own idle timer): the next request "
                        "wakes it", slot)

    def _parks(self, slot: Slot) -> bool:
        """Whether a replica drained now is parked rather than removed: the endpoint went to zero
        (idle, or a user's scale-to-zero) and the replica is of its current revision."""
        intent = self.intent
        return (self.host.park_ttl_s > 0 and not self.deleting and not intent.paused
                and asleep(intent, self.signals) and slot.revision == intent.revision and slot.info is not None)

    def _park(self, slot: Slot) -> None:
        slot.phase = Phase.PARKING
        slot.task = self.host.spawn(self._park_container(slot.id))

    def _parked(self, slot: Slot, error: str | None) -> None:
        slot.task = None
        if slot.phase is not Phase.PARKING:
            return
        if error is not None:
            log.warning("could not park replica %s of %s: %s; removing it", slot.id, self.key, error)
            self._stop(slot, 0.0)
            return
        slot.phase, slot.parked_at, slot.info = Phase.PARKED, self.host.clock(), None
        self.host.release_gpus(slot.id)  # a stopped container holds nothing; it asks for them back at its wake
        self.history.moved(slot.id, ReplicaState.PARKED, "its container is stopped and kept: a wake starts it again")
        self._event("replica_parked", "at zero: its container is stopped and kept, so that a wake starts it "
                    "again instead of creating one", slot)

    def _expire_parked(self, now: float) -> None:
        for slot in self.slots_in(Phase.PARKED):
            why = self._parked_must_go(slot, now)
            if why:
                self._event("parked_removed", f"its parked container is removed: {why}", slot)
                self._stop(slot, 0.0)

    def _parked_must_go(self, slot: Slot, now: float) -> str:
        if self.deleting:
            return "the endpoint was deleted"
        if self.intent.paused:
            return "the endpoint was paused"
        if slot.revision != self.intent.revision:
            return f"revision {self.intent.revision} replaced revision {slot.revision}"
        if slot.parked_at is not None and now - slot.parked_at >= self.host.park_ttl_s:
            return f"parked for park_ttl_s ({self.host.park_ttl_s:g} s)"
        if slot.gpus and self.host.gpus_taken(slot.id, slot.gpus):
            return "another replica holds its GPUs now"
        return ""

    def _unpark(self, slot: Slot, result: StepResult) -> None:
        try:
            self.host.reassign(slot.id, self.intent, slot.gpus)
        except Exception as error:  # noqa: BLE001 - its GPUs or room are gone: a new container instead
            self._event("parked_removed", f"its parked container cannot start again: {error}; a new one starts", slot)
            self._stop(slot, 0.0)
            return
        slot.phase, slot.unparked, slot.parked_at = Phase.STARTING, True, None
        self.history.moved(slot.id, ReplicaState.INITIALIZING, "starting its parked container again")
        result.started.append(slot.id)
        self._event("replica_unparking", "woken: its parked container starts again", slot)
        slot.task = self.host.spawn(self._launch(slot, self.intent))

    def _tier(self) -> str:
        """What a wake would start from now."""
        if self.slots_in(Phase.SLEEPING):
            return "sleeping"
        if any(s.revision == self.intent.revision for s in self.slots_in(Phase.PARKED)):
            return "parked"
        return "cold"

    # --- tasks (they report back by posting) -------------------------------------------

    async def _sleep(self, replica_id: str, info: ReplicaInfo | None) -> None:
        """Out of the route table, the replica finishes what it has (a worker may have sent it a
        request before it heard), then its engine is put to sleep; a wake asked meanwhile stops
        it before the engine is asked (never a sleep that aborts requests)."""
        host = self.host
        deadline = host.clock() + host.drain_grace_s
        while host.in_flight(self.key).get(replica_id, 0) > 0 and host.clock() < deadline:
            slot = self.slots.get(replica_id)
            if slot is None or slot.rouse:
                break
            await host.sleep(DRAIN_POLL_S)
        slot = self.slots.get(replica_id)
        if info is None or slot is None or slot.rouse or host.in_flight(self.key).get(replica_id, 0) > 0:
            if slot is not None:
                slot.rouse = False
            self.post(Slept(replica_id, aborted=True))
            return
        try:
            await host.launcher.sleep(self.intent, info)
        except Exception as error:  # noqa: BLE001 - a refused sleep leaves the engine awake
            self.post(Slept(replica_id, str(error) or type(error).__name__))
            return
        self.post(Slept(replica_id))

    async def _wake_engine(self, replica_id: str, info: ReplicaInfo | None) -> None:
        marks: list[tuple[str, float]] = []
        try:
            if info is None:
                raise RuntimeError("no address known")
            await self.host.launcher.wake(self.intent, info, lambda point: marks.append((point, self.host.clock())))
        except Exception as error:  # noqa: BLE001 - a failed wake replaces the replica
            self.post(Awoke(replica_id, str(error) or type(error).__name__))
            return
        marks.append(("ready", self.host.clock()))
        self.post(Awoke(replica_id, None, tuple(marks)))

    async def _observe(self, replica_id: str, info: ReplicaInfo | None) -> None:
        asleep_now = None
        try:
            if info is not None:
                asleep_now = await self.host.launcher.is_sleeping(self.intent, info)
        except Exception:  # noqa: BLE001 - unknown is not asleep; the next idle round asks again
            asleep_now = None
        finally:
            self.post(SleepSeen(replica_id, asleep_now))

    async def _park_container(self, replica_id: str) -> None:
        try:
            await self.host.runtime.park(replica_id, self.host.stop_grace_s)
        except RuntimeFailure as error:
            self.post(Parked(replica_id, str(error)))
            return
        self.post(Parked(replica_id))
