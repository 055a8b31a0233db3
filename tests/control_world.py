"""A control plane in memory for unit tests: the real Controller and owners, the fake runtime, a
launcher whose starts the test finishes by hand, a fake clock, and persistence into dicts."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

from autoscaler.control.controller import Clocks, Collaborators, Controller, Records, Timings
from autoscaler.control.messages import Failure
from autoscaler.control.planner import Phase
from autoscaler.model.intent import Intent, Signals
from autoscaler.model.state import Status
from engines.capacity import HostCapacity, Need
from engines.fake import FakeRuntime
from engines.gpus import Gpu, GpuAllocator
from engines.runtime import ContainerSpec, EndpointKey, ReplicaInfo
from proxy.core.control import AuthType, RouteTable

KEY = EndpointKey("acme", "e1")
_uids = itertools.count(1)


class HandLauncher:
    """Starts a real (fake-runtime) container, then waits until the test says ready() or fail().
    `auto` makes every start ready at once; `gpus_per_replica` makes it a GPU instance."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.gates: dict[str, asyncio.Future] = {}
        self.unhealthy: set[str] = set()
        self.hung: set[str] = set()
        self.auto = False
        self.gpus_per_replica = 0
        self.cpus_per_replica = 0  # > 0: a CPU instance of that many CPUs (x1, x2, ...)
        self.launched: list[str] = []
        self.unparked: list[str] = []
        # The sleeping tier: engines that sleep by themselves (llama.cpp) or are put to sleep.
        self.self_sleeping = False
        self.asleep: set[str] = set()  # engines asleep now
        self.slept: list[str] = []  # every sleep asked, in order
        self.sleep_error: Exception | None = None
        self.wake_error: Exception | None = None
        self.sleep_gates: dict[str, asyncio.Future] = {}  # with `hold_sleeps`: sleeps the test ends
        self.hold_sleeps = False

    def needs(self, intent: Intent) -> Need:
        if self.cpus_per_replica:
            return Need(cpus=self.cpus_per_replica, label=f"x{self.cpus_per_replica}")
        return Need(gpus=self.gpus_per_replica, gpu_type="nvidia-l4") if self.gpus_per_replica else Need()

    async def launch(self, intent, replica_id, gpus, report, mark=lambda point: None):
        self.launched.append(replica_id)
        report(f"starting {replica_id}")
        spec = ContainerSpec(image="echo", gpu_device_ids=tuple(gpus))
        mark("creating")
        info = await self.runtime.start(intent.key, replica_id, str(intent.revision), spec,
                                        on_created=lambda: mark("created"))
        mark("started")
        await self._until_released(replica_id)
        return info

    async def _until_released(self, replica_id: str) -> None:
        """Unless `auto`, the start waits until the test says ready() or fail()."""
        if not self.auto:
            gate = self.gates[replica_id] = asyncio.get_running_loop().create_future()
            try:
                await gate
            finally:
                self.gates.pop(replica_id, None)

    async def unpark(self, intent, replica_id, report, mark=lambda point: None):
        self.unparked.append(replica_id)
        mark("unparking")
        info = await self.runtime.unpark(replica_id)
        mark("started")
        await self._until_released(replica_id)
        return info

    def sleeps_by_itself(self, intent) -> bool:
        return self.self_sleeping

    async def sleep(self, intent, replica: ReplicaInfo) -> None:
        self.slept.append(replica.replica_id)
        if self.hold_sleeps:
            gate = self.sleep_gates[replica.replica_id] = asyncio.get_running_loop().create_future()
            try:
                await gate
            finally:
                self.sleep_gates.pop(replica.replica_id, None)
        if self.sleep_error is not None:
            raise self.sleep_error
        self.asleep.add(replica.replica_id)

    async def wake(self, intent, replica: ReplicaInfo, mark=lambda point: None) -> None:
        mark("waking")
        if self.wake_error is not None:
            raise self.wake_error
        self.asleep.discard(replica.replica_id)
        mark("awake")

    async def is_sleeping(self, intent, replica: ReplicaInfo) -> bool | None:
        return replica.replica_id in self.asleep

    async def healthy(self, replica: ReplicaInfo) -> bool:
        if replica.replica_id in self.hung:  # a paused engine: the connection opens, no answer comes
            await asyncio.Event().wait()
        return replica.replica_id not in self.unhealthy

    def ready(self, replica_id: str) -> None:
        self.gates[replica_id].set_result(None)

    def fail(self, replica_id: str, error: Exception) -> None:
        self.gates[replica_id].set_exception(error)


def intent(key: EndpointKey = KEY, **kw) -> Intent:
    base = dict(
        key=key, uid="u1", generation=1, revision=1, auth=AuthType.PUBLIC, health_route="/health",
        min_replicas=1, max_replicas=2,
    )
    base.update(kw)
    return Intent(**base)


class World:
    def __init__(self, gpus: int = 0, runtime: FakeRuntime | None = None, routes: RouteTable | None = None,
                 liveness_interval_s: float = 5.0, id_prefix: str = "r", park_ttl_s: float = 0.0) -> None:
        self.now = 0.0
        self.wall_now = 1_000_000.0
        self.routes = routes if routes is not None else RouteTable()
        self.runtime = runtime or FakeRuntime()
        self.launcher = HandLauncher(self.runtime)
        self.in_flight: dict[str, dict[str, int]] = {}
        self.statuses: dict[str, Status] = {}
        self.saved: dict[str, Signals] = {}
        self.failures: dict[str, Failure] = {}  # what the store keeps of failed revisions
        self.probe_ok = True
        inventory = [Gpu(i, f"GPU-{i}", "NVIDIA L4", "nvidia-l4", 24 << 30) for i in range(gpus)]
        self.allocator = GpuAllocator(inventory)
        self.capacity = HostCapacity(self.allocator, cpu_count=64, memory_bytes=256 << 30)
        ids = (f"{id_prefix}{i}" for i in itertools.count(1))  # another prefix for a restarted world

        async def probe(_intent):
            return self.probe_ok

        async def save_status(uid, status):
            self.statuses[uid] = status

        async def save_signals(uid, signals):
            self.saved[uid] = signals

        async def save_failure(uid, failure):
            if failure is None:
                self.failures.pop(uid, None)
            else:
                self.failures[uid] = failure

        self.controller = Controller(
            Collaborators(self.runtime, self.launcher, self.routes, self.capacity,
                          in_flight=lambda key: self.in_flight.get(key, {}), probe=probe),
            Records(save_status=save_status, save_signals=save_signals, save_failure=save_failure),
            Timings(drain_grace_s=5.0, stop_grace_s=1.0, liveness_interval_s=liveness_interval_s, park_ttl_s=park_ttl_s),
            Clocks(clock=lambda: self.now, wall=lambda: self.wall_now,
                   sleep=lambda seconds: asyncio.sleep(0),  # a drain's poll: time is the test's
                   new_id=lambda: next(ids)),
        )

    async def settle(self, rounds: int = 3):
        """Let tasks run and the owners step, a few times over; returns what the first round did."""
        first = None
        for _ in range(rounds):
            for _ in range(20):
                await asyncio.sleep(0)
            result = await self.controller.tick()
            first = first or result
        for _ in range(20):
            await asyncio.sleep(0)
        return first

    def ready_ids(self, key: EndpointKey = KEY) -> list[str]:
        entry = self.routes.lookup(key.namespace, key.name)
        return sorted(r.id for r in entry.replicas) if entry else []

    def containers(self, key: EndpointKey = KEY) -> list[str]:
        return sorted(rid for rid, c in self.runtime.containers.items() if c.info.endpoint == key)

    def phases(self, key: EndpointKey = KEY) -> dict[str, Phase]:
        owner = self.controller._owners.get(key)
        return {s.id: s.phase for s in owner.slots.values()} if owner else {}

    def status(self, key: EndpointKey = KEY) -> Status | None:
        return self.controller.status(key)

    def change(self, key: EndpointKey = KEY, *, resumed: bool = False, **kw) -> Intent:
        """An API write: the next generation of the endpoint's intent."""
        current = self.controller.intent(key)
        new = replace(current, generation=current.generation + 1, **kw)
        self.controller.apply(new, resumed=resumed)
        return new

    def scale_to_zero(self, key: EndpointKey = KEY) -> None:
        self.wall_now += 1
        self.change(key, zeroed_at=self.wall_now)

    async def close(self) -> None:
        await self.controller.close()


def new_uid() -> str:
    return f"u{next(_uids) + 100}"
