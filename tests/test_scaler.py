"""The scaling loop with a fake clock, the fake runtime and the real pending counter: tick() by tick()."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from autoscaler.controller import Controller, Desired
from autoscaler.policy import PolicyConfig, Scaling
from autoscaler.scaler import Scaler
from engines.fake import FakeRuntime
from engines.runtime import ContainerSpec, EndpointKey
from proxy.control import AuthType, RouteTable
from proxy.pending import PendingCounter

KEY = EndpointKey("acme", "e1")
CONFIG = PolicyConfig(window_s=5, stabilization_s=30, minute_s=1)


class InstantLauncher:
    """Starts replicas on the fake runtime and calls them ready at once."""

    def __init__(self, runtime: FakeRuntime):
        self.runtime = runtime

    async def launch(self, desired, replica_id, report):
        return await self.runtime.start(desired.key, replica_id, str(desired.revision), ContainerSpec(image="echo"))

    def release(self, replica_id):
        pass

    async def healthy(self, replica):
        return True


class World:
    def __init__(self, scaling: Scaling, free_slots=None):
        self.now = 0.0
        self.runtime = FakeRuntime()
        self.routes = RouteTable()
        self.counter = PendingCounter()
        self.targets: list[int] = []
        ids = (f"r{i}" for i in itertools.count(1))

        async def on_status(key, status):
            pass

        async def probe(desired):
            return True

        self.controller = Controller(
            self.runtime, InstantLauncher(self.runtime), self.routes,
            in_flight=self.counter.replica_loads, on_status=on_status, probe=probe,
            clock=lambda: self.now, new_id=lambda: next(ids), drain_grace_s=0,
            free_slots=free_slots,
        )

        async def on_target(key, replicas):
            self.targets.append(replicas)

        self.scaler = Scaler(
            self.controller, self.counter.snapshot, config=CONFIG, scaling_of=lambda key: scaling,
            on_target=on_target, clock=lambda: self.now,
        )
        self.controller.set_desired(Desired(
            KEY, 1, AuthType.PUBLIC, "/health", scaling.min_replicas, scaling.max_replicas,
            target=max(scaling.min_replicas, 1),
        ))
        self.tickets = []

    def load(self, pending: int) -> None:
        """Hold exactly `pending` requests open against the endpoint."""
        while len(self.tickets) < pending:
            self.tickets.append(self.counter.track(str(KEY)).__enter__())
        while len(self.tickets) > pending:
            self.tickets.pop().close()

    async def step(self, until: float, pending: int) -> int:
        """Advance the clock second by second to `until` under `pending`; the replicas running then."""
        self.load(pending)
        while self.now < until:
            self.now += 1
            await self.scaler.tick()
            await self.controller.tick()
            for _ in range(5):
                await asyncio.sleep(0)
        await self.controller.tick()
        for _ in range(5):
            await asyncio.sleep(0)
        return len(await self.runtime.list(KEY))

    async def close(self):
        self.load(0)
        await self.controller.close()


@pytest.fixture
async def world():
    worlds = []

    def make(scaling, **kw):
        worlds.append(World(scaling, **kw))
        return worlds[-1]

    yield make
    for w in worlds:
        await w.close()


async def test_up_under_load_steady_without_flapping_then_down_after_stabilization(world):
    w = world(Scaling(min_replicas=1, max_replicas=3, threshold=1.5))
    assert await w.step(1, pending=0) == 1
    assert await w.step(10, pending=6) == 3, w.targets  # 6 pending / 1.5 = 4 wanted, max 3
    assert await w.step(40, pending=3) == 3  # 3 / 1.5 = 2 recommended, 3 within the window: steady
    assert w.targets == [2, 3] or w.targets == [3], w.targets  # no flapping on the way
    # Load gone at t=40: the highest recommendation of the last 30 s is 2 (3 pending / 1.5).
    assert await w.step(55, pending=0) == 2
    assert await w.step(80, pending=0) == 1  # the window has passed: down to min
    assert w.targets[-1] == 1


async def test_to_zero_after_idle_and_back_on_a_wake(world):
    w = world(Scaling(min_replicas=0, max_replicas=2, threshold=1.5, idle_timeout_min=3))  # 3 s
    assert await w.step(2, pending=1) == 1  # a long request: not idle
    assert await w.step(4, pending=1) == 1
    assert await w.step(10, pending=0) == 0  # idle 3 s after the last request
    assert w.targets[-1] == 0
    assert await w.step(12, pending=0) == 0  # stays at zero
    w.controller.wake(KEY)  # what the proxy does for the next request
    assert await w.step(13, pending=1) == 1


async def test_capacity_bounds_scale_up(world):
    gpus = 2  # one GPU per replica, two GPUs on the host
    holder = []
    w = world(Scaling(min_replicas=1, max_replicas=4, threshold=1.0),
              free_slots=lambda desired: gpus - len(holder[0].runtime.containers))
    holder.append(w)
    assert await w.step(5, pending=10) == 2  # wanted 4, but the host has GPUs for two
    assert "wants 4 replicas, waiting for capacity" in w.controller.status(KEY).message


async def test_paused_endpoints_are_left_alone(world):
    w = world(Scaling(min_replicas=1, max_replicas=3, threshold=1.5))
    desired = w.controller.desired(KEY)
    from dataclasses import replace

    w.controller.set_desired(replace(desired, paused=True))
    assert await w.step(5, pending=9) == 0
    assert w.targets == []
