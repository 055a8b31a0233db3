"""The reconciler: makes the replicas in the runtime match each endpoint's desired state.

It owns the lifecycle of replicas (start, readiness, drain, stop, replacement, adoption after a
restart) and derives each endpoint's wire state from what it sees. It decides nothing about
*how many* replicas an endpoint should have: `Desired.target` says that (set by the API, by a
wake, and by the scaling loop). `tick()` does one round and returns what it started and drained;
`run()` repeats it whenever something changes, and at least every `interval_s`.

Concurrency: everything runs on one event loop. Replica starts and drains are tasks owned by the
controller (kept in `_tasks`, cancelled at `close()`); they report back by mutating the slot and
calling `kick()`, never by touching the route table directly except through `_publish`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from engines.runtime import EndpointKey, ReplicaInfo, ReplicaStatus, Runtime, RuntimeError_
from proxy.control import AuthType, Replica, RouteEntry, RouteState, RouteTable

from .state import State

log = logging.getLogger("endpointd.controller")

# Start-up failures in a row (same revision) before an endpoint is `failed` (issue 4).
MAX_START_FAILURES = 3
# Backoff between start attempts: 1 s, 2 s, 4 s… capped; long enough not to hammer a broken
# image, short enough that a transient failure costs seconds.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
# How often a replica waiting for GPUs tries again; placement is cheap, so a few seconds.
CAPACITY_RETRY_S = 5.0


class WaitingForCapacity(Exception):
    """A replica cannot be placed now (its GPUs are held): not a failure, tried again later."""


@dataclass(frozen=True)
class Desired:
    """What the user declared, as far as running replicas is concerned."""

    key: EndpointKey
    revision: int  # bumped by changes that need new containers (model, image, hardware, env)
    auth: AuthType
    health_route: str
    min_replicas: int
    max_replicas: int
    target: int  # replicas wanted now, min..max (0 when scaled to zero)
    paused: bool = False
    domain: str | None = None
    spec: Any = None  # the endpoint's full spec, read by the launcher only


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


@dataclass
class Slot:
    id: str
    revision: int
    phase: Phase
    info: ReplicaInfo | None = None
    started_at: float = 0.0


@dataclass
class Status:
    state: State
    message: str
    ready: int
    target: int


@dataclass
class _Endpoint:
    desired: Desired
    slots: dict[str, Slot] = field(default_factory=dict)
    failures: int = 0  # consecutive start failures of the current revision
    failed_revision: int | None = None  # the revision that failed MAX_START_FAILURES times
    last_error: str = ""
    retry_at: float = 0.0
    progress: str = ""  # what the newest start is doing, for status.message
    verified: bool = False  # the health route answered 200 through the proxy
    verifying: bool = False
    status: Status | None = None
    deleting: bool = False
    note: str = ""  # from the scaling loop, appended to a running endpoint's message


class Launcher(Protocol):
    async def launch(
        self, desired: Desired, replica_id: str, report: Callable[[str], None]
    ) -> ReplicaInfo:
        """Prepare (artifacts, image, hardware), start and wait until healthy; raise on failure."""

    async def healthy(self, replica: ReplicaInfo) -> bool:
        """Whether a running replica answers its health route with 200 now."""

    def release(self, replica_id: str) -> None:
        """Give back what the replica held (GPUs)."""


StatusSink = Callable[[EndpointKey, Status], Awaitable[None]]
Probe = Callable[[Desired], Awaitable[bool]]


@dataclass(frozen=True)
class TickResult:
    started: list[str]
    drained: list[str]


class Controller:
    def __init__(
        self,
        runtime: Runtime,
        launcher: Launcher,
        routes: RouteTable,
        *,
        in_flight: Callable[[str], Mapping[str, int]],
        on_status: StatusSink,
        probe: Probe,
        drain_grace_s: float = 30.0,
        stop_grace_s: float = 10.0,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] | None = None,
        free_slots: Callable[[Desired], int | None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._launcher = launcher
        self._routes = routes
        self._in_flight = in_flight
        self._on_status = on_status
        self._probe = probe
        self._drain_grace_s = drain_grace_s
        self._stop_grace_s = stop_grace_s
        self._interval_s = interval_s
        self._clock = clock
        self._new_id = new_id or _id_maker()
        self._free_slots = free_slots
        self._endpoints: dict[EndpointKey, _Endpoint] = {}
        self._tasks: set[asyncio.Task] = set()
        self._kicked = asyncio.Event()

    # --- desired state, from the API and the proxy ------------------------------------------

    def set_desired(self, desired: Desired) -> None:
        ep = self._endpoints.get(desired.key)
        if ep is None:
            self._endpoints[desired.key] = _Endpoint(desired)
        else:
            if desired.revision != ep.desired.revision:
                ep.failures, ep.last_error, ep.retry_at = 0, "", 0.0
            ep.desired = desired
        self._publish(desired.key)
        self.kick()

    def desired(self, key: EndpointKey) -> Desired | None:
        ep = self._endpoints.get(key)
        return ep.desired if ep else None

    def delete(self, key: EndpointKey) -> None:
        ep = self._endpoints.get(key)
        if ep is not None:
            ep.deleting = True
            self._routes.remove(key.namespace, key.name)
            self.kick()

    def keys(self) -> list[EndpointKey]:
        return [key for key, ep in self._endpoints.items() if not ep.deleting]

    def ready_ids(self, key: EndpointKey) -> list[str]:
        ep = self._endpoints.get(key)
        return [s.id for s in ep.slots.values() if s.phase is Phase.READY] if ep else []

    def ready_count(self, key: EndpointKey) -> int:
        return len(self.ready_ids(key))

    def capacity(self, key: EndpointKey) -> int | None:
        """Most replicas of this endpoint that can run now (GPUs), or None when only max bounds it."""
        ep = self._endpoints.get(key)
        if ep is None or self._free_slots is None:
            return None
        free = self._free_slots(ep.desired)
        if free is None:
            return None
        return free + sum(1 for s in ep.slots.values() if s.phase is not Phase.DRAINING)

    def set_note(self, key: EndpointKey, note: str) -> None:
        """A remark from the scaling loop shown in the status message (e.g. waiting for capacity)."""
        ep = self._endpoints.get(key)
        if ep is not None and ep.note != note:
            ep.note = note
            self.kick()

    def set_target(self, key: EndpointKey, replicas: int) -> None:
        """The scaling loop's decision: how many replicas this endpoint should have now."""
        ep = self._endpoints.get(key)
        if ep is not None and not ep.deleting and ep.desired.target != replicas:
            self.set_desired(replace(ep.desired, target=replicas))

    def status(self, key: EndpointKey) -> Status | None:
        ep = self._endpoints.get(key)
        return self._derive(ep) if ep else None

    def wake(self, key: EndpointKey) -> None:
        """Scale from zero to one; a no-op unless the endpoint is at zero and may serve."""
        ep = self._endpoints.get(key)
        if ep is None or ep.deleting or ep.desired.paused or ep.desired.target > 0:
            return
        log.info("waking %s", key)
        self.set_desired(replace(ep.desired, target=max(1, ep.desired.min_replicas)))

    def kick(self) -> None:
        self._kicked.set()

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self._kicked.clear()
            try:
                await self.tick()
            except Exception:  # one bad round must not stop reconciling every endpoint
                log.exception("reconcile round failed")
            try:
                await asyncio.wait_for(self._kicked.wait(), self._interval_s)
            except TimeoutError:
                pass

    async def tick(self) -> TickResult:
        result = TickResult([], [])
        now = self._clock()
        for key, ep in list(self._endpoints.items()):
            if ep.deleting:
                for slot in list(ep.slots.values()):
                    if slot.phase is not Phase.DRAINING:
                        self._drain(ep, slot, result)
                if not ep.slots:
                    del self._endpoints[key]
                continue
            self._reconcile(ep, now, result)
            await self._report(ep)
        return result

    def _reconcile(self, ep: _Endpoint, now: float, result: TickResult) -> None:
        d = ep.desired
        live = [s for s in ep.slots.values() if s.phase is not Phase.DRAINING]
        current = [s for s in live if s.revision == d.revision]
        old = [s for s in live if s.revision != d.revision]
        target = 0 if d.paused else d.target
        broken = ep.failed_revision == d.revision
        if not broken:
            missing = target - len(current)
            if missing > 0 and now >= ep.retry_at:
                for _ in range(missing):
                    self._start(ep, result)
        if len(current) > target:
            for slot in self._victims(ep, current, len(current) - target):
                self._drain(ep, slot, result)
        ready_current = sum(1 for s in current if s.phase is Phase.READY)
        # A roll completes once the new revision has as many ready replicas as wanted; until
        # then the old revision keeps serving (and keeps serving for good if the new one fails).
        if old and (ready_current >= target or (target == 0 and not broken)):
            for slot in old:
                self._drain(ep, slot, result)

    def _victims(self, ep: _Endpoint, slots: list[Slot], n: int) -> list[Slot]:
        """Starting replicas first, then the ready ones with the fewest requests in flight."""
        loads = self._in_flight(str(ep.desired.key))
        order = sorted(slots, key=lambda s: (s.phase is Phase.READY, loads.get(s.id, 0)))
        return order[:n]

    # --- replica lifecycle -------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, ep: _Endpoint, result: TickResult) -> None:
        slot = Slot(self._new_id(), ep.desired.revision, Phase.STARTING, started_at=self._clock())
        ep.slots[slot.id] = slot
        result.started.append(slot.id)
        self._spawn(self._launch(ep, slot))

    async def _launch(self, ep: _Endpoint, slot: Slot) -> None:
        def report(message: str) -> None:
            ep.progress = message
            self.kick()

        try:
            info = await self._launcher.launch(ep.desired, slot.id, report)
        except asyncio.CancelledError:
            self._launcher.release(slot.id)
            raise
        except WaitingForCapacity as waiting:
            ep.slots.pop(slot.id, None)
            ep.progress = str(waiting)
            ep.retry_at = self._clock() + CAPACITY_RETRY_S
            self.kick()
            return
        except Exception as error:  # noqa: BLE001 - every failure of a start is reported the same way
            self._launcher.release(slot.id)
            ep.slots.pop(slot.id, None)
            if slot.revision == ep.desired.revision:
                ep.failures += 1
                ep.last_error = str(error)
                ep.retry_at = self._clock() + min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (ep.failures - 1))
                if ep.failures >= MAX_START_FAILURES:
                    ep.failed_revision = slot.revision
            log.warning("replica %s of %s failed to start: %s", slot.id, ep.desired.key, error)
            self._publish(ep.desired.key)
            await self._stop_quietly(slot.id)
            self.kick()
            return
        if slot.phase is Phase.DRAINING or slot.id not in ep.slots:
            return  # drained while starting: the drain task stops it
        slot.info = info
        slot.phase = Phase.READY
        if slot.revision == ep.desired.revision:
            ep.failures, ep.last_error = 0, ""
        self._publish(ep.desired.key)
        self.kick()

    def _drain(self, ep: _Endpoint, slot: Slot, result: TickResult) -> None:
        was_ready = slot.phase is Phase.READY
        slot.phase = Phase.DRAINING
        result.drained.append(slot.id)
        self._publish(ep.desired.key)
        self._spawn(self._finish_drain(ep, slot, was_ready))

    async def _finish_drain(self, ep: _Endpoint, slot: Slot, was_ready: bool) -> None:
        """The replica takes no new requests (it left the route table); wait for the ones it
        has, streams included, up to the grace period, then stop it."""
        if was_ready:
            deadline = self._clock() + self._drain_grace_s
            key = str(ep.desired.key)
            while self._in_flight(key).get(slot.id, 0) > 0 and self._clock() < deadline:
                await asyncio.sleep(0.05)
        await self._stop_quietly(slot.id)
        self._launcher.release(slot.id)
        ep.slots.pop(slot.id, None)
        self.kick()

    async def _stop_quietly(self, replica_id: str) -> None:
        try:
            await self._runtime.stop(replica_id, self._stop_grace_s)
        except RuntimeError_ as error:
            log.debug("stop %s: %s", replica_id, error)

    def replica_died(self, replica_id: str, exit_code: int | None) -> None:
        """A container exited: take it out of service at once; the next tick replaces it."""
        for ep in self._endpoints.values():
            slot = ep.slots.get(replica_id)
            if slot is None or slot.phase is not Phase.READY:
                continue
            log.warning("replica %s of %s died (exit code %s); replacing it", replica_id, ep.desired.key, exit_code)
            ep.slots.pop(replica_id)
            self._launcher.release(replica_id)
            self._publish(ep.desired.key)
            self._spawn(self._stop_quietly(replica_id))
            self.kick()

    async def watch_deaths(self) -> None:
        async for event in self._runtime.events():
            self.replica_died(event.replica_id, event.exit_code)

    async def adopt(self, found: list[ReplicaInfo]) -> list[str]:
        """After a restart: keep the running, healthy containers of known endpoints' current
        revision, stop the rest (the next round replaces them). Returns the adopted replica ids."""
        adopted = []
        for info in found:
            ep = self._endpoints.get(info.endpoint)
            if (
                ep is None
                or info.status is not ReplicaStatus.RUNNING
                or str(ep.desired.revision) != info.revision
                or info.address is None
                or not await self._launcher.healthy(info)
            ):
                await self._stop_quietly(info.replica_id)
                continue
            ep.slots[info.replica_id] = Slot(
                info.replica_id, ep.desired.revision, Phase.READY, info=info, started_at=self._clock()
            )
            adopted.append(info.replica_id)
            self._publish(info.endpoint)
        self.kick()
        return adopted

    # --- what the rest of the system sees ----------------------------------------------------

    def _publish(self, key: EndpointKey) -> None:
        ep = self._endpoints[key]
        d = ep.desired
        ready = tuple(
            Replica(s.id, s.info.address)
            for s in ep.slots.values()
            if s.phase is Phase.READY and s.info is not None and s.info.address
        )
        if d.paused:
            state = RouteState.PAUSED
        elif ep.failed_revision == d.revision and not ready:
            state = RouteState.FAILED
        else:
            state = RouteState.SERVING
        self._routes.put(
            RouteEntry(
                namespace=key.namespace, name=key.name, auth=d.auth, state=state, replicas=ready,
                domain=d.domain, message=ep.last_error,
            )
        )
        if not ready:
            ep.verified = False

    def _derive(self, ep: _Endpoint) -> Status:
        d = ep.desired
        slots = ep.slots.values()
        ready = sum(1 for s in slots if s.phase is Phase.READY)
        ready_current = sum(1 for s in slots if s.phase is Phase.READY and s.revision == d.revision)
        old = any(s.revision != d.revision and s.phase is not Phase.DRAINING for s in slots)
        target = 0 if d.paused else d.target
        broken = ep.failed_revision == d.revision
        if d.paused:
            return Status(State.PAUSED, "paused by a user; resume it to serve again", ready, 0)
        if broken and old:
            return Status(State.UPDATE_FAILED, f"the update failed, the previous version keeps serving: {ep.last_error}", ready, target)
        if broken:
            return Status(State.FAILED, ep.last_error, ready, target)
        if old:
            return Status(State.UPDATING, f"rolling to revision {d.revision}: {ready_current}/{target} new replicas ready", ready, target)
        if target == 0:
            return Status(State.SCALED_TO_ZERO, "scaled to zero; the next request wakes it", ready, 0)
        if ready and ep.verified:
            message = f"{ready}/{target} replicas ready" + (f"; {ep.note}" if ep.note else "")
            return Status(State.RUNNING, message, ready, target)
        if not slots and not ep.failures and not ep.progress:
            return Status(State.PENDING, "waiting to start", ready, target)
        message = ep.progress or "starting"
        if ep.last_error:
            message = f"{message} (attempt {ep.failures + 1} of {MAX_START_FAILURES}; last: {ep.last_error})"
        return Status(State.INITIALIZING, message, ready, target)

    async def _report(self, ep: _Endpoint) -> None:
        if any(s.phase is Phase.READY for s in ep.slots.values()) and not ep.verified and not ep.verifying:
            ep.verifying = True
            self._spawn(self._verify(ep))
        status = self._derive(ep)
        if status != ep.status:
            ep.status = status
            await self._on_status(ep.desired.key, status)

    async def _verify(self, ep: _Endpoint) -> None:
        try:
            ep.verified = await self._probe(ep.desired)
        finally:
            ep.verifying = False
        if ep.verified:
            self.kick()  # a failed probe is retried by the next periodic round, not in a hot loop

    async def close(self) -> None:
        """Stop the controller's own tasks; containers keep running for the next start to adopt."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _id_maker() -> Callable[[], str]:
    import secrets

    return lambda: secrets.token_hex(3)
