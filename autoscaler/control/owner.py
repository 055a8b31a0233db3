"""One endpoint's owner: the only writer of its replicas.

Everything that happens to an endpoint arrives as a message in its inbox — a new intent from the
API, a wake from the proxy, a recommendation from the scaler, the results of its own launch,
drain and stop tasks, deaths and liveness failures — and only `step()` reads the inbox and
changes the slots. `step()` never awaits: on the one event loop it runs atomically, so no two
writers can interleave, whatever the order in which messages arrive. It then asks the pure
rules what to do (`intent.wanted`, `planner.plan`) and carries the actions out, spawning the
tasks that report back by message.

The idle ladder (sleepAfter, then scaleToZeroTimeout: sleeping, then parked replicas) is
`IdleLadder`, which `Owner` inherits; ladder.py explains it.

Invariants held here, beside the planner's:
- a slot exists from before its container is created until after it is gone, so a container of
  ours without a slot is an orphan (the controller sweeps those);
- a starting replica is stopped by cancelling its launch, whose cancellation path removes the
  container it made; a cancelled launch is never a failure;
- GPUs (and the CPUs and memory a replica's limits take) are assigned when a slot is made and
  released only when its container is gone or stopped (parked); a sleeping replica keeps them, so
  it can always wake; a parked one asks for its GPU ids back when it starts again, and is removed
  instead when another replica holds them;
- after delete the owner publishes nothing: the endpoint's route never comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from autoscaler.control.host import Host
from autoscaler.control.ladder import DRAIN_POLL_S, IdleLadder
from autoscaler.control.messages import (
    Adopted,
    Awoke,
    Delete,
    Died,
    DrainDone,
    Failure,
    Launched,
    LaunchEnded,
    Liveness,
    Message,
    NewIntent,
    Parked,
    Progress,
    Recommend,
    SleepSeen,
    Slept,
    StopFailed,
    Stopped,
    Verified,
    Wake,
)
from autoscaler.control.planner import Cancel, Drain, Phase, Reclaim, SlotView, Start, Unpark, View, plan
from autoscaler.control.slot import Slot, StepResult
from autoscaler.control.wakes import WakeHistory, measure
from autoscaler.model.intent import Intent, Signals, asleep, asleep_since, wanted
from autoscaler.model.state import State, Status
from autoscaler.model.timelines import ReplicaState
from engines.runtime import ReplicaInfo, ReplicaNotFound, RuntimeFailure
from proxy.core.control import Replica, RouteEntry, RouteState

log = logging.getLogger("endpointd.controller")

# Start-up failures in a row (same revision) before an endpoint is `failed`.
MAX_START_FAILURES = 3
# Backoff between start attempts: 1 s, 2 s, 4 s… capped; long enough not to hammer a broken
# image, short enough that a transient failure costs seconds.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
# A container that could not be removed (the engine unreachable) is tried again this often.
STOP_RETRY_S = 5.0
# A probe through the proxy that failed is tried again after this, not in a hot loop.
VERIFY_RETRY_S = 1.0
# A wake processed after a scale-to-zero is later than it, even if the wall clock stepped back.
AFTER_S = 0.001


def slot_state(slot: Slot) -> ReplicaState:
    """The timeline state of a slot's phase (a stopping or parking replica is still draining to the user)."""
    return {Phase.STARTING: ReplicaState.INITIALIZING, Phase.READY: ReplicaState.RUNNING,
            Phase.SLEEPING: ReplicaState.SLEEPING, Phase.PARKED: ReplicaState.PARKED}.get(
        slot.phase, ReplicaState.DRAINING)


class _LatestWriter:
    """Writes the latest value with one task at a time: a slow store never reorders writes."""

    def __init__(self, host: Host, write: Callable[[Any], Awaitable[None]]) -> None:
        self._host, self._write = host, write
        self._value: Any = None
        self._dirty = False
        self._task: asyncio.Task[None] | None = None

    def put(self, value: Any) -> None:
        self._value, self._dirty = value, True
        if self._task is None:
            self._task = self._host.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                try:
                    await self._write(self._value)
                except Exception:  # noqa: BLE001 - a failed write is logged; the next change writes again
                    log.exception("could not save the state of an endpoint")
        finally:
            self._task = None


class Owner(IdleLadder):
    def __init__(self, host: Host, intent: Intent, signals: Signals = Signals(), failure: Failure | None = None) -> None:
        self.host = host
        self.intent = intent
        self.signals = signals
        self.key = str(intent.key)
        self.slots: dict[str, Slot] = {}
        self.deleting = False
        self.failures = 0  # consecutive start failures of the current revision
        self.failed_revision: int | None = None
        self.last_error = ""
        if failure is not None and failure.revision == intent.revision:  # kept: a restart does not retry it
            self.failures, self.failed_revision, self.last_error = MAX_START_FAILURES, failure.revision, failure.error
        self.retry_at = 0.0
        self.progress = ""  # what the newest start is doing, for the status message
        self.note = ""  # from the scaler: wants more than capacity allows
        self.waiting = ""  # why a wanted replica cannot be placed now (no free CPUs, memory, GPUs)
        self.verified = False  # the health route answered 200 through the proxy
        self._verifying = False
        self._verify_after = 0.0
        self.history = host.new_history(intent.uid)  # each replica's timeline, for GET …/replica
        self._inbox: list[Message] = []
        self._published: RouteEntry | None = None
        self.wakes = WakeHistory()  # the last wakes' durations and phases
        self._wake_asked: float | None = None  # a wake from zero not yet answered by a ready replica
        self._woke: tuple[float, tuple[tuple[str, float], ...], str] | None = None  # answered, to measure
        self._observing: set[str] = set()  # replicas whose engine is being asked whether it sleeps
        self._status: Status | None = None
        self._status_writer = _LatestWriter(host, lambda s: host.save_status(self.intent.uid, s))
        self._signals_writer = _LatestWriter(host, lambda s: host.save_signals(self.intent.uid, s))
        self._failure_writer = _LatestWriter(host, lambda f: host.save_failure(self.intent.uid, f))

    # --- what others do: post ------------------------------------------------------------

    def post(self, message: Message) -> None:
        self._inbox.append(message)
        self.host.kick()

    @property
    def finished(self) -> bool:
        """Deleted, and nothing of it is left running."""
        return self.deleting and not self.slots

    def wanted(self) -> int:
        return 0 if self.deleting else wanted(self.intent, self.signals)

    def slots_in(self, *phases: Phase) -> list[Slot]:
        return [s for s in self.slots.values() if s.phase in phases]

    def status(self) -> Status:
        return self._derive()

    # --- the one writer ------------------------------------------------------------------

    def step(self) -> StepResult:
        result = StepResult()
        inbox, self._inbox = self._inbox, []
        for message in inbox:
            self._handle(message)
        now = self.host.clock()
        for slot in self.slots_in(Phase.STOPPING):
            if slot.task is None and slot.stop_retry_at is not None and now >= slot.stop_retry_at:
                self._stop(slot, 0.0)
        self._expire_parked(now)
        self._carry_out(now, result)
        self._publish()
        if self._woke is not None:
            self._measure_wake()
        self._report(now)
        return result

    def _measure_wake(self) -> None:
        """The wake answered: its replica was just published, which released the held requests."""
        assert self._woke is not None
        asked, marks, tier = self._woke
        self._woke = None
        record = measure(asked, marks, self.host.clock(), tier)
        self.wakes.add(record)
        self._event("woke", record.describe(), seconds=round(record.total_s, 3), tier=tier,
                    phases={name: round(s, 3) for name, s in record.phases})
        self._publish()  # its observed wake time (the proxy's Retry-After)

    def _carry_out(self, now: float, result: StepResult) -> None:
        intent = self.intent
        free, why = self.host.capacity_of(intent)
        broken = self.failed_revision == intent.revision
        view = View(
            revision=intent.revision,
            wanted=self.wanted(),
            max_replicas=intent.max_replicas,
            slots=tuple(
                SlotView(s.id, s.revision, s.phase, self.host.in_flight(self.key).get(s.id, 0))
                for s in self.slots.values()
            ),
            may_start=not broken and now >= self.retry_at and not self.deleting,
            failed=broken,
            free_capacity=free,
        )
        for action in plan(view):
            if isinstance(action, Start):
                for _ in range(action.count):
                    if not self._start(result):
                        break
            elif isinstance(action, Cancel):
                self._cancel(self.slots[action.id], result)
            elif isinstance(action, Drain):
                self._drain(self.slots[action.id], result)
            elif isinstance(action, Reclaim):
                self._reclaim(self.slots[action.id])
            elif isinstance(action, Unpark):
                self._unpark(self.slots[action.id], result)
        live = len(self.slots_in(Phase.STARTING, Phase.READY, Phase.SLEEPING))
        waiting = ""
        if view.wanted > live and view.may_start:
            free, why = self.host.capacity_of(intent)  # after what this step started
            waiting = why if free == 0 else ""
        if waiting:
            self.progress = f"waiting for capacity: {waiting}"
            if not self.waiting:
                self._event("waiting_for_capacity", f"no replica can be placed now: {waiting}; it starts once "
                            "capacity is freed")
        elif self.waiting and self.progress.startswith("waiting for capacity"):
            self.progress = ""
        self.waiting = waiting

    def _handle(self, message: Message) -> None:
        slot = self.slots.get(getattr(message, "id", ""))
        match message:
            case NewIntent(intent, resumed):
                self._new_intent(intent, resumed)
            case Wake(at):
                self._wake("a request arrived", at)
            case Recommend(replicas, reason, beyond, sleep):
                self._recommend(replicas, reason, beyond)
                self._idle(sleep)
            case Delete():
                self.deleting = True
                self._event("deleted", "the endpoint was deleted")
            case Adopted(info, parked):
                self._adopted(info, parked)
            case Verified(ok):
                self._verifying = False
                self.verified = ok and bool(self.slots_in(Phase.READY))
                if not ok:
                    self._verify_after = self.host.clock() + VERIFY_RETRY_S
            case SleepSeen(replica_id, asleep_now):
                self._observing.discard(replica_id)
                if slot is not None:
                    self._seen_asleep(slot, asleep_now)
            case _ if slot is None:
                pass  # about a slot already gone: nothing left to do
            case Progress(_, text):
                if slot.phase is Phase.STARTING:
                    self.progress = text
                    self.history.moved(slot.id, ReplicaState.INITIALIZING, text)
            case Launched(_, info, marks):
                self._launched(slot, info, marks)
            case Slept(_, error, aborted):
                self._slept(slot, error, aborted)
            case Awoke(_, error, marks):
                self._awoke(slot, error, marks)
            case Parked(_, error):
                self._parked(slot, error)

            case LaunchEnded(_, error, removed):
                self._launch_ended(slot, error, removed)
            case DrainDone():
                if slot.phase is Phase.DRAINING:
                    slot.task = None
                    if self._parks(slot):
                        self._park(slot)
                    else:
                        self._stop(slot, self.host.stop_grace_s)
            case Stopped():
                self._gone(slot)
            case StopFailed(_, error):
                slot.task = None
                slot.stop_retry_at = self.host.clock() + STOP_RETRY_S
                log.warning("could not remove replica %s of %s: %s; trying again", slot.id, self.key, error)
            case Died(_, exit_code):
                if slot.phase in (Phase.READY, Phase.DRAINING, Phase.SLEEPING):
                    self._event("replica_died", f"its container exited with code {exit_code}; replacing it", slot)
                    self.history.moved(slot.id, slot_state(slot), f"exited with code {exit_code}", exit_code)
                    self._stop(slot, 0.0)
            case Liveness(_, ok):
                self._liveness(slot, ok)

    def _new_intent(self, intent: Intent, resumed: bool) -> None:
        old = self.intent
        if intent.generation < old.generation:
            return  # a stale post: the newer intent is already here
        self.intent = intent
        if intent.revision != old.revision:
            self.failures, self.last_error, self.retry_at, self.progress = 0, "", 0.0, ""
            self._clear_failure()  # a new revision gets its own tries
            self._event("revision", f"revision {intent.revision}: rolling the replicas")
        if intent.zeroed_at is not None and intent.zeroed_at != old.zeroed_at:
            self.signals = replace(self.signals, recommendation=None)
            self._event("scaled_to_zero", "a user scaled the endpoint to zero; the next request wakes it")
        if intent.paused and not old.paused:
            self._event("paused", "a user paused the endpoint")
        if resumed:
            self._clear_failure()
            self.failures, self.last_error, self.retry_at = 0, "", 0.0
            self._wake("a user resumed the endpoint")

    def _clear_failure(self) -> None:
        if self.failed_revision is not None:
            self.failed_revision = None
            self._failure_writer.put(None)

    def _wake(self, reason: str, at: float | None = None) -> None:
        intent, signals = self.intent, self.signals
        if self.deleting or intent.paused:
            return
        sleeping = self.slots_in(Phase.SLEEPING)
        if sleeping and not asleep(intent, signals):
            if self._wake_asked is None:
                self._wake_asked, self._woke = self.host.clock() if at is None else at, None
            for slot in sleeping:
                self._rouse(slot)
            return
        if not asleep(intent, signals):
            return
        self._wake_asked = self.host.clock() if at is None else at
        self._woke = None
        since = max(t for t in (intent.zeroed_at, signals.idle_at) if t is not None)
        self._set_signals(replace(signals, woken_at=max(self.host.wall(), since + AFTER_S), recommendation=None))
        self._event("woken", f"woken from zero: {reason}")

    def _recommend(self, replicas: int, reason: str, beyond: int | None) -> None:
        self.note = f"wants {beyond} replicas, waiting for capacity: {self.host.capacity_of(self.intent)[1]}" if beyond else ""
        if self.deleting or asleep(self.intent, self.signals):
            return  # at zero only a wake brings it back
        if replicas == 0:
            if self.intent.min_replicas == 0:
                self._set_signals(replace(self.signals, idle_at=self.host.wall(), recommendation=None))
                self._event("idle", f"scaled to zero: {reason}")
            return
        self.signals = replace(self.signals, recommendation=replicas)

    def _set_signals(self, signals: Signals) -> None:
        """Signals with effective state in them (wake, idle) are persisted."""
        self.signals = signals
        self._signals_writer.put(signals)

    def _liveness(self, slot: Slot, ok: bool) -> None:
        if slot.phase not in (Phase.READY, Phase.DRAINING, Phase.SLEEPING):
            return
        slot.liveness_failures = 0 if ok else slot.liveness_failures + 1
        if slot.liveness_failures >= self.host.liveness_failures:
            reason = f"its health route failed {slot.liveness_failures} checks in a row; replacing it"
            self._event("replica_unresponsive", reason, slot)
            self.history.moved(slot.id, slot_state(slot), reason)
            self._stop(slot, 0.0)

    # --- slot transitions (only from step) ---------------------------------------------

    def _start(self, result: StepResult) -> bool:
        intent = self.intent
        slot_id = self.host.new_id()
        try:
            gpus = self.host.assign_gpus(slot_id, intent)
        except Exception as error:  # noqa: BLE001 - capacity changed since the plan: wait for it
            self.progress = f"waiting for capacity: {error}"
            return False
        slot = self.slots[slot_id] = Slot(slot_id, intent.revision, Phase.STARTING, gpus=gpus)
        slot.task = self.host.spawn(self._launch(slot, intent))
        self.history.started(slot_id, intent.revision, gpus)
        result.started.append(slot_id)
        self._event("replica_starting", f"starting a replica of revision {intent.revision}", slot, gpus=list(gpus))
        return True

    def _cancel(self, slot: Slot, result: StepResult) -> None:
        slot.phase = Phase.STOPPING
        result.drained.append(slot.id)
        self._event("replica_cancelled", "no longer wanted while starting: its launch is cancelled", slot)
        if slot.task is not None:
            slot.task.cancel()  # its cancellation path removes the container and posts LaunchEnded

    def _drain(self, slot: Slot, result: StepResult) -> None:
        if slot.task is not None:  # a sleeping replica's sleep or wake: it leaves instead
            slot.task.cancel()
        slot.phase = Phase.DRAINING
        self.history.moved(slot.id, ReplicaState.DRAINING, "no longer wanted: finishing its requests")
        result.drained.append(slot.id)
        self._event("replica_draining", "no longer wanted: it finishes its requests, then stops", slot)
        slot.task = self.host.spawn(self._drain_wait(slot.id))

    def _reclaim(self, slot: Slot) -> None:
        if slot.task is not None:
            slot.task.cancel()
            slot.task = None
        slot.phase = Phase.READY
        self.history.moved(slot.id, ReplicaState.RUNNING, "wanted again: taking requests")
        self._event("replica_reclaimed", "wanted again while draining: it takes requests again", slot)

    def _stop(self, slot: Slot, grace_s: float) -> None:
        if slot.task is not None:
            slot.task.cancel()  # a drain wait; a launch is never stopped this way, but cancelled
        slot.phase = Phase.STOPPING
        slot.stop_retry_at = None
        slot.task = self.host.spawn(self._remove(slot.id, grace_s))

    def _adopted(self, info: ReplicaInfo, parked: bool) -> None:
        revision = int(info.revision)  # the controller adopts only revisions up to the current one
        if parked:
            slot = self.slots[info.replica_id] = Slot(info.replica_id, revision, Phase.PARKED, gpus=info.gpus,
                                                      parked_at=self.host.clock())
            self.history.started(info.replica_id, revision, info.gpus)
            self.history.moved(slot.id, ReplicaState.PARKED, "found parked after a restart: a wake starts it again")
            self._event("replica_adopted", f"found parked after a restart (revision {revision})", slot)
            return
        self.slots[info.replica_id] = Slot(info.replica_id, revision, Phase.READY, gpus=info.gpus, info=info)
        self.history.started(info.replica_id, revision, info.gpus, running=True)
        # It answered its health route just now, and the route table sends it requests as soon
        # as it is published: the status says so at once, as the data plane does. (A probe
        # through the proxy cannot answer yet: the listener opens after the adoption.)
        self.verified = True
        # No scale-down before the scaler has a full window of data: keep what was running (during
        # a roll too: the old replicas kept are those the new revision still lacks).
        adopted = len(self.slots_in(Phase.READY))
        self.signals = replace(self.signals, recommendation=max(self.signals.recommendation or 0, adopted))
        self._event("replica_adopted", f"found running after a restart (revision {revision}), answering on {info.address}",
                    self.slots[info.replica_id])

    def _launched(self, slot: Slot, info: ReplicaInfo, marks: tuple[tuple[str, float], ...]) -> None:
        slot.task = None
        slot.info = info
        if slot.phase is Phase.STOPPING:  # cancelled after its launch had already finished
            self._stop(slot, 0.0)
            return
        if self._wake_asked is not None and slot.revision == self.intent.revision:
            tier = "parked" if slot.unparked else "cold"
            self._woke, self._wake_asked = (self._wake_asked, marks, tier), None  # measured once published
        slot.phase = Phase.READY
        self.history.moved(slot.id, ReplicaState.RUNNING, f"answers {info.health_route or 'on its port'}")
        if slot.revision == self.intent.revision:
            self.failures, self.last_error, self.progress = 0, "", ""
        self._event("replica_ready", f"answers {info.health_route or 'connections'} on {info.address}", slot)

    def _launch_ended(self, slot: Slot, error: str | None, removed: bool) -> None:
        slot.task = None
        if slot.phase is Phase.STARTING and error is not None and slot.unparked:
            # Not a failure of the revision: a new container takes its place at the next step.
            self._event("replica_unpark_failed", f"its parked container did not start again: {error}; a new one "
                        "starts", slot)
            self.history.moved(slot.id, ReplicaState.FAILED, f"its parked container did not start again: {error}")
        elif slot.phase is Phase.STARTING and error is not None:
            log.warning("replica %s of %s failed to start: %s", slot.id, self.key, error)
            self._event("replica_failed", error, slot)
            self.history.moved(slot.id, ReplicaState.FAILED, error)
            if slot.revision == self.intent.revision:
                self.failures += 1
                self.last_error = error
                self.retry_at = self.host.clock() + min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (self.failures - 1))
                if self.failures >= MAX_START_FAILURES:
                    self._wake_asked = None  # this wake gives no replica: not one to time
                    self.failed_revision = slot.revision
                    self._failure_writer.put(Failure(slot.revision, error))
        slot.phase = Phase.STOPPING
        if removed:
            self._gone(slot)
        else:
            self._stop(slot, 0.0)

    def _gone(self, slot: Slot) -> None:
        """Its container no longer exists: only now are its GPUs free."""
        del self.slots[slot.id]
        self.host.release_gpus(slot.id)
        self.history.moved(slot.id, ReplicaState.STOPPED)
        self._event("replica_stopped", "its container is gone", slot)

    # --- tasks (they report back by posting) -------------------------------------------

    async def _launch(self, slot: Slot, intent: Intent) -> None:
        def report(message: str) -> None:
            self.post(Progress(slot.id, message))

        marks: list[tuple[str, float]] = []

        def mark(point: str) -> None:
            marks.append((point, self.host.clock()))

        try:
            if slot.unparked:
                info = await self.host.launcher.unpark(intent, slot.id, report, mark)
            else:
                info = await self.host.launcher.launch(intent, slot.id, slot.gpus, report, mark)
        except asyncio.CancelledError:
            self.host.spawn(self._discard(slot.id, None))
            raise
        except Exception as error:  # noqa: BLE001 - every failure of a start is reported the same way
            self.host.spawn(self._discard(slot.id, str(error) or type(error).__name__))
            return
        mark("ready")
        self.post(Launched(slot.id, info, tuple(marks)))

    async def _discard(self, replica_id: str, error: str | None) -> None:
        """A launch that gave no ready replica: remove what it made, then say so. A task of its
        own, so that cancelling the launch (a scale-to-zero during a failed start's clean-up)
        cannot interrupt the removal and leave the container behind."""
        self.post(LaunchEnded(replica_id, error, await self._remove_quietly(replica_id)))

    async def _remove_quietly(self, replica_id: str) -> bool:
        """Remove the replica's container if there is one; whether it is gone now."""
        try:
            await self.host.runtime.stop(replica_id, 0.0)
        except ReplicaNotFound:
            return True
        except RuntimeFailure as error:
            log.warning("could not remove replica %s: %s", replica_id, error)
            return False
        return True

    async def _drain_wait(self, replica_id: str) -> None:
        """Out of the route table, the replica finishes what it has, streams included, up to the
        grace period."""
        host = self.host
        deadline = host.clock() + host.drain_grace_s
        while host.in_flight(self.key).get(replica_id, 0) > 0 and host.clock() < deadline:
            await host.sleep(DRAIN_POLL_S)
        self.post(DrainDone(replica_id))

    async def _remove(self, replica_id: str, grace_s: float) -> None:
        try:
            await self.host.runtime.stop(replica_id, grace_s)
        except ReplicaNotFound:
            pass
        except RuntimeFailure as error:
            self.post(StopFailed(replica_id, str(error)))
            return
        self.post(Stopped(replica_id))

    async def _verify(self, intent: Intent) -> None:
        ok = False
        try:
            ok = await self.host.probe(intent)
        finally:
            self.post(Verified(ok))

    # --- what the rest of the system sees ---------------------------------------------

    def _publish(self) -> None:
        if self.deleting:
            return
        intent = self.intent
        ready = tuple(
            Replica(s.id, s.info.address, api_key=s.info.api_key)
            for s in self.slots_in(Phase.READY) if s.info is not None and s.info.address
        )
        broken = self.failed_revision == intent.revision
        if intent.paused:
            state = RouteState.PAUSED
        elif broken and not ready:
            state = RouteState.FAILED
        else:
            state = RouteState.SERVING
        sleeping = len(self.slots_in(Phase.SLEEPING))
        coming = 0 if broken else sleeping + sum(
            1 for s in self.slots_in(Phase.STARTING) if s.revision == intent.revision)
        no_capacity = ""
        holding = [s for s in self.slots.values() if s.phase is not Phase.PARKED]
        if not holding and state is RouteState.SERVING:  # asleep or waiting: could a wake be placed?
            free, why = self.host.capacity_of(intent)
            no_capacity = why if free == 0 else ""
        entry = RouteEntry(
            namespace=intent.key.namespace, name=intent.key.name, auth=intent.auth, state=state, replicas=ready,
            domain=intent.domain, message=self.last_error, coming=coming, no_capacity=no_capacity,
            asleep_since=asleep_since(intent, self.signals), engine=intent.engine,
            wake_s=self.wakes.median_s(self._tier()), sleeping=sleeping,
        )
        if entry != self._published:
            self._published = entry
            self.host.routes.put(entry)
        if not ready and not sleeping:
            self.verified = False

    def _derive(self) -> Status:
        intent = self.intent
        ready = len(self.slots_in(Phase.READY))
        target = self.wanted()
        current_ready = sum(1 for s in self.slots_in(Phase.READY) if s.revision == intent.revision)
        old = any(s.revision != intent.revision for s in self.slots_in(Phase.STARTING, Phase.READY))
        broken = self.failed_revision == intent.revision
        if intent.paused:
            return Status(State.PAUSED, "paused by a user; resume it to serve again", ready, 0)
        if broken and old:
            return Status(State.UPDATE_FAILED, f"the update failed, the previous version keeps serving: {self.last_error}", ready, target)
        if broken:
            return Status(State.FAILED, f"{self.last_error}; resume the endpoint to try again", ready, target)
        if old:
            progress = f"; {self.progress}" if self.progress else ""  # the new replica's download or pull
            return Status(State.UPDATING, f"rolling to revision {intent.revision}: {current_ready}/{target} new replicas ready{progress}", ready, target)
        if target == 0:
            parked = sum(1 for s in self.slots_in(Phase.PARKED) if s.revision == intent.revision)
            kept = f" ({parked} parked: its container starts again instead of a new one)" if parked else ""
            return Status(State.SCALED_TO_ZERO, f"scaled to zero; the next request wakes it{kept}", ready, 0,
                          tier=self._tier())
        sleeping = len(self.slots_in(Phase.SLEEPING))
        if sleeping and not ready and self.verified:
            # Running to the client: a request is served after the wake, with no 503 to retry on.
            return Status(State.RUNNING, f"{sleeping}/{target} replicas asleep (sleepAfter): the next request wakes "
                          "them and is held meanwhile", sleeping, target, tier="sleeping")
        if ready and self.verified:
            dozing = sum(1 for s in self.slots_in(Phase.READY) if s.self_asleep)
            message = f"{ready}/{target} replicas ready" + (f", {dozing} of them asleep (their engine's own "
                                                             "sleep: the next request wakes it)" if dozing else "")
            message += f"; {self.note}" if self.note else ""
            return Status(State.RUNNING, message, ready + sleeping, target,
                          tier="sleeping" if dozing == ready else "warm")
        if self.waiting and not self.slots_in(Phase.STARTING, Phase.READY):
            return Status(State.PENDING, f"waiting for capacity: {self.waiting}", ready, target)
        if not self.slots and not self.failures and not self.progress:
            return Status(State.PENDING, "waiting to start", ready, target)
        message = self.progress or "starting"
        if self.last_error:
            message = f"{message} (attempt {self.failures + 1} of {MAX_START_FAILURES}; last: {self.last_error})"
        return Status(State.INITIALIZING, message, ready, target)

    def _report(self, now: float) -> None:
        if self.deleting:
            return
        if self.slots_in(Phase.READY) and not self.verified and not self._verifying and now >= self._verify_after:
            self._verifying = True
            self.host.spawn(self._verify(self.intent))
        status = self._derive()
        if status != self._status:
            self._status = status
            self._status_writer.put(status)

    def _event(self, kind: str, reason: str, slot: Slot | None = None, **inputs: Any) -> None:
        replica = slot.id if slot else None
        self.host.events.record(self.intent.uid, kind, reason, replica=replica, **inputs)
        log.info("%s%s %s: %s", self.key, f" replica {replica}" if replica else "", kind, reason)
