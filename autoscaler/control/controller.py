"""The controller: one owner per endpoint, the loop that steps them, and what runs beside it.

The API posts intents (`apply`, `delete`), the proxy posts wakes, the scaler posts
recommendations, the runtime's death events and the liveness probes post what they see; each
goes to the endpoint's `Owner` (owner.py), the only writer of its replicas. `tick()` steps every
owner once and returns what was started and drained; `run()` repeats it whenever something was
posted, and at least every `interval_s`. Beside it:

- `check_liveness()`: a ready replica whose health route fails `liveness_failures` checks in a
  row is taken out of rotation and replaced; the checks run every `liveness_interval_s`, and a
  check not answered within that interval has failed, so a hung engine is out within about
  `liveness_failures` intervals (plus the one before the first check);
- `sweep()`: any container with this instance's labels and no slot is stopped — the footprint of
  a bug or of a crash, garbage-collected by label ownership like a ReplicaSet's pods — and the
  network of any endpoint that no longer exists is removed;
- `adopt()`: after a restart, running healthy containers of the current revision, and of the
  revisions before it (a roll under way, a failed update whose old revision serves), become slots
  again, with the GPUs they hold; the rest are stopped. With the failure the store kept, the
  owners then do what they did before the restart: finish the roll, or keep the old revision.

Every scale-up is bounded by the host's capacity and by the endpoint's namespace's quota
(`capacity_of`, `assign_gpus`; quota_book.py): a replica that would pass the quota is not started,
and the owner's "waiting for capacity" status and event name the quota that holds it.

A deleted endpoint's owner is retired: it drains what is left and is forgotten once nothing of it
runs, while a re-create with the same name gets a fresh owner at once. `close()` (endpointd
stopping) removes what is left of deleted endpoints at once, rather than at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from autoscaler.control.host import Launcher
from autoscaler.control.messages import Adopted, Delete, Died, Failure, Liveness, NewIntent, Recommend, Wake
from autoscaler.control.owner import Owner
from autoscaler.control.planner import Phase
from autoscaler.control.quota_book import QuotaBook
from autoscaler.control.wakes import WakeRecord
from autoscaler.model.events import EventLog
from autoscaler.model.intent import Intent, Signals, asleep
from autoscaler.model.quotas import Quota, Use
from autoscaler.model.state import Status
from autoscaler.model.timelines import ReplicaHistory, ReplicaRecord
from engines.capacity import HostCapacity, Need
from engines.gpus import AdoptConflict, NoCapacity
from engines.runtime import ContainerStatus, EndpointKey, ReplicaInfo, ReplicaNotFound, Runtime, RuntimeFailure
from proxy.core.control import RouteTable

log = logging.getLogger("endpointd.controller")

T = TypeVar("T")

# Liveness after readiness: 3 checks 5 s apart, each failed if not answered within those 5 s — a
# hung engine is out of rotation within 15-20 s, while one slow answer (a long prefill hogging
# the engine) is not enough to replace it.
LIVENESS_INTERVAL_S = 5.0
LIVENESS_FAILURES = 3
# The orphan sweep lists every container of ours this often: a leak is short-lived, and a
# listing of a few containers every 10 s costs the Docker engine nothing.
SWEEP_INTERVAL_S = 10.0
# At exit, the time given to removing what deleted endpoints left (their requests were drained with
# the listener's): well within the app's clean-up grace (proxy/server.py CLEANUP_GRACE_S, 5 s).
EXIT_REMOVAL_S = 3.0


def _revision(info: ReplicaInfo) -> int:
    """The revision on a container's label; 0 (never adopted) when it is not a revision number."""
    text = info.revision
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else 0


@dataclass(frozen=True)
class TickResult:
    started: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)


def _what(need: Need) -> str:
    """A replica of the endpoint, in status messages (as engines/capacity.py says it)."""
    return f"this endpoint's {need.label} instance" if need.label else "a replica"


def _replica_id() -> str:
    return secrets.token_hex(3)


@dataclass(frozen=True)
class Collaborators:
    """What the controller drives and asks: the runtime, the launcher, the proxy's route table,
    the host's capacity, the proxy's load per replica (`in_flight(endpoint)`) and the readiness
    probe through the proxy."""

    runtime: Runtime
    launcher: Launcher
    routes: RouteTable
    capacity: HostCapacity
    in_flight: Callable[[str], Mapping[str, int]]
    probe: Callable[[Intent], Awaitable[bool]]


@dataclass(frozen=True)
class Records:
    """Where the controller keeps what it learns. `events` and `histories(uid)` (the replica
    history of an incarnation): the journal's keep them across restarts; by default they are in
    memory. `on_forget(uid)`: an endpoint incarnation is gone for good (deleted, and nothing of it
    left running): what others keep of it (logs, analytics) goes too."""

    save_status: Callable[[str, Status], Awaitable[None]]
    save_signals: Callable[[str, Signals], Awaitable[None]]
    save_failure: Callable[[str, Failure | None], Awaitable[None]] | None = None
    events: EventLog | None = None
    histories: Callable[[str], ReplicaHistory] | None = None
    on_forget: Callable[[str], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Timings:
    drain_grace_s: float = 30.0
    stop_grace_s: float = 10.0
    interval_s: float = 1.0  # a tick at least this often, and whenever something was posted
    liveness_interval_s: float = LIVENESS_INTERVAL_S
    liveness_failures: int = LIVENESS_FAILURES
    sweep_interval_s: float = SWEEP_INTERVAL_S
    park_ttl_s: float = 0.0  # parked containers kept this long; 0: an endpoint at zero keeps none


@dataclass(frozen=True)
class Clocks:
    """Time and replica ids, which tests fake: `clock` for durations, `wall` for timestamps,
    `sleep` for a drain's polls."""

    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    new_id: Callable[[], str] = _replica_id


class Controller:
    def __init__(
        self, collaborators: Collaborators, records: Records, timings: Timings = Timings(), clocks: Clocks = Clocks(),
    ) -> None:
        self.runtime = collaborators.runtime
        self.launcher = collaborators.launcher
        self.routes = collaborators.routes
        self.capacity = collaborators.capacity
        self.quotas = QuotaBook()  # each namespace's quota, and what its replicas hold
        self._in_flight = collaborators.in_flight
        self._probe = collaborators.probe
        self.events = records.events or EventLog(wall=clocks.wall)
        self._histories = records.histories or (lambda uid: ReplicaHistory(clocks.wall))
        self._on_forget = records.on_forget
        self._save_status = records.save_status
        self._save_signals = records.save_signals
        self._save_failure = records.save_failure
        self.drain_grace_s = timings.drain_grace_s
        self.stop_grace_s = timings.stop_grace_s
        self.liveness_failures = timings.liveness_failures
        self.park_ttl_s = timings.park_ttl_s
        self._interval_s = timings.interval_s
        self._liveness_interval_s = timings.liveness_interval_s
        self._sweep_interval_s = timings.sweep_interval_s
        self._clocks = clocks
        self._owners: dict[EndpointKey, Owner] = {}
        self._retired: list[Owner] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._kicked = asyncio.Event()

    # --- the Host an owner sees ----------------------------------------------------------

    def clock(self) -> float:
        return self._clocks.clock()

    def wall(self) -> float:
        return self._clocks.wall()

    async def sleep(self, seconds: float) -> None:
        await self._clocks.sleep(seconds)

    def new_id(self) -> str:
        return self._clocks.new_id()

    def kick(self) -> None:
        self._kicked.set()

    def spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def in_flight(self, key: str) -> Mapping[str, int]:
        return self._in_flight(key)

    def capacity_of(self, intent: Intent) -> tuple[int | None, str]:
        """Replicas of this endpoint that can still be placed — on the host and within its
        namespace's quota — and what bounds them (the quota, when both leave room for none)."""
        need = self.launcher.needs(intent)
        host, host_why = self.capacity.free(need)
        quota, quota_why = self.quotas.free(intent.key.namespace, need, _what(need))
        if quota is not None and (host is None or quota <= host):
            return quota, quota_why
        return host, host_why

    def assign_gpus(self, replica_id: str, intent: Intent) -> tuple[str, ...]:
        """Hold the replica's GPUs, CPUs and memory, within its namespace's quota; the GPU ids it
        gets (NoCapacity if it does not fit)."""
        need = self._within_quota(intent)
        gpus = self.capacity.assign(replica_id, need)
        self.quotas.hold(replica_id, intent.key.namespace, need)
        return gpus

    def release_gpus(self, replica_id: str) -> None:
        self.capacity.release(replica_id)
        self.quotas.release(replica_id)

    def reassign(self, replica_id: str, intent: Intent, gpus: tuple[str, ...]) -> None:
        """Hold again what a parked replica needs, with the very GPU ids its container was made
        with (NoCapacity when the CPUs, memory or quota are taken, AdoptConflict when the GPUs are)."""
        need = self._within_quota(intent)
        free, why = self.capacity.free(need)
        if free == 0:
            raise NoCapacity(why)
        self.capacity.adopt(replica_id, need, gpus)
        self.quotas.hold(replica_id, intent.key.namespace, need)

    def _within_quota(self, intent: Intent) -> Need:
        """What a replica of the endpoint needs; NoCapacity when its namespace's quota holds it."""
        need = self.launcher.needs(intent)
        free, why = self.quotas.free(intent.key.namespace, need, _what(need))
        if free == 0:
            raise NoCapacity(why)
        return need

    def set_quota(self, namespace: str, quota: Quota | None) -> None:
        """The namespace's quota from now on (None: none), from the API once it is stored: every
        owner steps again, so that a raised quota starts what waited and the statuses say so."""
        self.quotas.set(namespace, quota)
        self.kick()

    def quota_use(self, namespace: str) -> Use:
        """What the namespace's replicas hold now (starting, ready, sleeping, leaving; not parked)."""
        return self.quotas.use(namespace)

    def gpus_taken(self, replica_id: str, gpus: tuple[str, ...]) -> bool:
        """Whether another replica holds any of these GPUs now."""
        holders = self.capacity.gpus.holders
        return any(holders.get(gpu, replica_id) != replica_id for gpu in gpus)

    async def probe(self, intent: Intent) -> bool:
        return await self._probe(intent)

    async def save_status(self, uid: str, status: Status) -> None:
        await self._save_status(uid, status)

    async def save_signals(self, uid: str, signals: Signals) -> None:
        await self._save_signals(uid, signals)

    def new_history(self, uid: str) -> ReplicaHistory:
        return self._histories(uid)

    async def save_failure(self, uid: str, failure: Failure | None) -> None:
        if self._save_failure is not None:
            await self._save_failure(uid, failure)

    # --- posting ---------------------------------------------------------------------------

    def apply(
        self, intent: Intent, signals: Signals | None = None, *, resumed: bool = False, failure: Failure | None = None,
    ) -> None:
        """A new or changed endpoint, from the API (or the store, at start, with the failure it kept)."""
        owner = self._owners.get(intent.key)
        if owner is not None and owner.intent.uid != intent.uid:
            self._retire(intent.key)  # the same name, another incarnation
            owner = None
        if owner is None:
            self._owners[intent.key] = Owner(self, intent, signals or Signals(), failure)
            self.kick()
        else:
            owner.post(NewIntent(intent, resumed))

    def delete(self, key: EndpointKey) -> None:
        """The URL stops answering at once; the replicas drain; the name is free for a re-create."""
        if key in self._owners:
            self._retire(key)

    def _retire(self, key: EndpointKey) -> None:
        owner = self._owners.pop(key)
        self.routes.remove(key.namespace, key.name)
        owner.post(Delete())
        self._retired.append(owner)

    def wake(self, key: EndpointKey) -> None:
        owner = self._owners.get(key)
        if owner is not None:
            owner.post(Wake(self.clock()))

    def recommend(self, key: EndpointKey, replicas: int, reason: str = "", beyond_capacity: int | None = None,
                  *, sleep: bool = False) -> None:
        owner = self._owners.get(key)
        if owner is not None:
            owner.post(Recommend(replicas, reason, beyond_capacity, sleep))

    def replica_died(self, replica_id: str, exit_code: int | None) -> None:
        owner = self._owner_of(replica_id)
        if owner is not None:
            owner.post(Died(replica_id, exit_code))

    # --- reading -----------------------------------------------------------------------------

    def keys(self) -> list[EndpointKey]:
        return list(self._owners)

    def intent(self, key: EndpointKey) -> Intent | None:
        owner = self._owners.get(key)
        return owner.intent if owner else None

    def wanted(self, key: EndpointKey) -> int:
        owner = self._owners.get(key)
        return owner.wanted() if owner else 0

    def ready_ids(self, key: EndpointKey) -> list[str]:
        owner = self._owners.get(key)
        return [s.id for s in owner.slots_in(Phase.READY)] if owner else []

    def ready_count(self, key: EndpointKey) -> int:
        return len(self.ready_ids(key))

    def leaving_ids(self, key: EndpointKey) -> list[str]:
        """Replicas on their way out: what is still in flight on them is not new demand."""
        owner = self._owners.get(key)
        return [s.id for s in owner.slots_in(Phase.DRAINING, Phase.STOPPING, Phase.PARKING)] if owner else []

    def holding(self) -> list[tuple[Intent, list[str], list[str]]]:
        """Each endpoint's replicas that hold resources now (starting, ready, sleeping, draining,
        stopping: every one but the parked) and its parked ones; a deleted endpoint's too, while
        they drain. What usage meters."""
        return [
            (owner.intent, [s.id for s in owner.slots.values() if s.phase is not Phase.PARKED],
             [s.id for s in owner.slots_in(Phase.PARKED)])
            for owner in self._all()
        ]

    def replicas_can_run(self, key: EndpointKey) -> int | None:
        """Most replicas of this endpoint that can run now (GPUs, CPUs, memory), or None when only max bounds it."""
        owner = self._owners.get(key)
        if owner is None:
            return None
        free, _ = self.capacity_of(owner.intent)
        return None if free is None else free + len(owner.slots_in(Phase.STARTING, Phase.READY, Phase.SLEEPING))

    def replicas(self, key: EndpointKey) -> list[ReplicaRecord]:
        """The endpoint's replicas with their timelines (those stopped in the last 24 h too)."""
        owner = self._owners.get(key)
        return owner.history.items() if owner else []

    def wakes(self, key: EndpointKey) -> list[WakeRecord]:
        """The endpoint's last wakes from zero, oldest first, each with its phases."""
        owner = self._owners.get(key)
        return owner.wakes.items() if owner else []

    def status(self, key: EndpointKey) -> Status | None:
        owner = self._owners.get(key)
        return owner.status() if owner else None

    def owned_ids(self) -> set[str]:
        return {slot_id for owner in self._all() for slot_id in owner.slots}

    def _all(self) -> list[Owner]:
        return [*self._owners.values(), *self._retired]

    def _owner_of(self, replica_id: str) -> Owner | None:
        return next((o for o in self._all() if replica_id in o.slots), None)

    # --- the loops -----------------------------------------------------------------------------

    async def tick(self) -> TickResult:
        """Step every owner once (retired ones too, until nothing of theirs is left)."""
        result = TickResult()
        for owner in self._all():
            try:
                step = owner.step()
            except Exception:  # one endpoint's bad round must not stop reconciling the others
                log.exception("reconciling %s failed", owner.key)
                continue
            result.started.extend(step.started)
            result.drained.extend(step.drained)
        for owner in [o for o in self._retired if o.finished]:
            self._retired.remove(owner)
            self.events.forget(owner.intent.uid)
            if self._on_forget is not None:
                self.spawn(self._forget(self._on_forget, owner.intent.uid))
            if owner.intent.key not in self._owners:  # not re-created meanwhile: its network goes too
                self.spawn(self._remove_network(owner.intent.key))
        return result

    @staticmethod
    async def _forget(on_forget: Callable[[str], Awaitable[None]], uid: str) -> None:
        try:
            await on_forget(uid)
        except Exception:  # noqa: BLE001 - what is left of it is pruned by its own bounds
            log.exception("could not forget the logs and analytics of endpoint incarnation %s", uid)

    async def _remove_network(self, key: EndpointKey) -> None:
        try:
            await self.runtime.remove_network(key)
        except RuntimeFailure as error:
            log.warning("could not remove the network of %s: %s", key, error)

    async def run(self) -> None:
        while True:
            self._kicked.clear()
            await self.tick()
            try:
                await asyncio.wait_for(self._kicked.wait(), self._interval_s)
            except TimeoutError:
                pass

    async def check_liveness(self) -> None:
        """Probe every ready (and draining) replica once; each result goes to its owner. A probe
        not answered within `liveness_interval_s` has failed: a hung engine (one that accepts
        connections and never answers) costs one interval per check, not a long timeout on top."""
        checks = [
            (owner, slot.id, slot.info)
            for owner in self._all()
            for slot in owner.slots_in(Phase.READY, Phase.DRAINING, Phase.SLEEPING)
            if slot.info is not None
        ]
        results = await asyncio.gather(
            *(asyncio.wait_for(self.launcher.healthy(info), self._liveness_interval_s) for _, _, info in checks),
            return_exceptions=True,
        )
        for (owner, slot_id, _), ok in zip(checks, results, strict=True):
            owner.post(Liveness(slot_id, ok is True))

    async def run_liveness(self) -> None:
        """A round every `liveness_interval_s`, from the start of one to the start of the next
        (a round takes at most one interval): `liveness_failures` failed checks in a row take
        that many intervals, as the setting says."""
        loop = asyncio.get_running_loop()  # the time asyncio.sleep counts in
        due = loop.time()
        while True:
            due = max(due + self._liveness_interval_s, loop.time())  # a late round does not bunch the next ones
            await asyncio.sleep(due - loop.time())
            try:
                await self.check_liveness()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("liveness round failed")

    async def sweep(self) -> list[str]:
        """Stop every container of ours that no slot owns; returns their replica ids."""
        found = await self.runtime.list()
        owned = self.owned_ids()  # read after the listing: a slot always exists before its container
        orphans = [info for info in found if info.replica_id not in owned]
        for info in orphans:
            log.warning("stopping orphan container %s (replica %s of %s): no slot owns it",
                        info.container_name, info.replica_id, info.endpoint)
            try:
                await self.runtime.stop(info.replica_id, 0.0)
            except RuntimeFailure as error:
                log.warning("could not stop orphan %s: %s", info.replica_id, error)
        live = set(self._owners) | {owner.intent.key for owner in self._retired}
        for key in await self.runtime.networks():
            if key not in live:  # an endpoint deleted while endpointd was down, or a failed removal
                await self._remove_network(key)
        return [info.replica_id for info in orphans]

    async def run_sweeps(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("orphan sweep failed")

    async def watch_deaths(self) -> None:
        async for event in self.runtime.events():
            self.replica_died(event.replica_id, event.exit_code)

    async def adopt(self, found: list[ReplicaInfo]) -> list[str]:
        """After a restart: keep the running, healthy containers of known endpoints' current
        revision and of the revisions before it, with their GPUs; stop the rest. The owners then
        go on from there: an old revision serves until the new one is ready (a roll), or for good
        (the new one failed: the store kept that); what is missing is started, what is surplus drained.

        An old revision's replica is counted with the current revision's CPU and memory (the
        container's GPUs are its own): they differ only when the update changed the hardware."""
        adopted = []
        for info in found:
            owner = self._owners.get(info.endpoint)
            if owner is not None and self._parked(owner, info):
                owner.post(Adopted(info, parked=True))
                adopted.append(info.replica_id)
                continue
            if owner is not None and await self._keep(owner, info):
                owner.post(Adopted(info))
                adopted.append(info.replica_id)
                continue
            try:
                await self.runtime.stop(info.replica_id, 0.0)
            except RuntimeFailure as error:
                log.warning("could not stop replica %s found at start: %s", info.replica_id, error)
        await self.tick()
        for owner in self._owners.values():  # what the journal kept and was not adopted is stopped
            owner.history.settle(owner.slots)
        return adopted

    def _parked(self, owner: Owner, info: ReplicaInfo) -> bool:
        """Whether a container found at start is one of the endpoint's parked ones: stopped, of its
        current revision, while the endpoint is at zero (nothing else of it is stopped and kept)."""
        return (self.park_ttl_s > 0 and info.status is ContainerStatus.EXITED
                and _revision(info) == owner.intent.revision and asleep(owner.intent, owner.signals))

    async def _keep(self, owner: Owner, info: ReplicaInfo) -> bool:
        """Whether `adopt` keeps a container found at start: running, of a revision up to the
        owner's, healthy, and its GPUs, CPUs and memory taken in the host's capacity."""
        keep = (
            info.status is ContainerStatus.RUNNING
            and 0 < _revision(info) <= owner.intent.revision
            and info.address is not None
            and await self.launcher.healthy(info)
        )
        if keep:
            need = self.launcher.needs(owner.intent)
            try:
                self.capacity.adopt(info.replica_id, need, info.gpus)
            except AdoptConflict as conflict:
                log.warning("not adopting replica %s: %s", info.replica_id, conflict)
                keep = False
            else:  # it runs: it counts toward its namespace's quota, even one lowered meanwhile
                self.quotas.hold(info.replica_id, owner.intent.key.namespace, need)
        return keep

    async def close(self) -> None:
        """Stop the controller's own tasks; running containers are left for the next start to
        adopt, except those of deleted endpoints: nothing would adopt them, so they go now."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            async with asyncio.timeout(EXIT_REMOVAL_S):
                await self._remove_deleted()
        except TimeoutError:
            log.warning("what deleted endpoints left was not all removed within %g s; the next start removes it",
                        EXIT_REMOVAL_S)
        except RuntimeFailure as error:
            log.warning("could not remove what deleted endpoints left (the next start does): %s", error)

    async def _remove_deleted(self) -> None:
        """The containers of retired owners (their requests are over: the listener drained them
        first), then every network of ours whose endpoint no longer exists."""
        doomed = [slot_id for owner in self._retired for slot_id in owner.slots]
        results = await asyncio.gather(*(self.runtime.stop(rid, 0.0) for rid in doomed), return_exceptions=True)
        for rid, result in zip(doomed, results, strict=True):
            if isinstance(result, RuntimeFailure) and not isinstance(result, ReplicaNotFound):
                log.warning("could not remove replica %s of a deleted endpoint: %s", rid, result)
        for key in await self.runtime.networks():
            if key not in self._owners:
                await self._remove_network(key)
