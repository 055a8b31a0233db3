"""The scaling loop with a fake clock, the fake runtime and the real pending counter: tick() by tick()."""

from __future__ import annotations

import math

import pytest

from autoscaler.model.quotas import Quota
from autoscaler.scaling.policy import PolicyConfig, PolicyScaling
from autoscaler.scaling.scaler import Scaler
from engines.runtime import EndpointKey
from proxy.core.pending import PendingCounter
from tests.control_world import KEY, World, intent

CONFIG = PolicyConfig(window_s=5, stabilization_s=30, minute_s=1)


class ScaledWorld(World):
    """The control world with the scaler on top, replicas ready as soon as they start."""

    def __init__(self, scaling: PolicyScaling, gpus: int = 0, scaling_of=None):
        super().__init__(gpus=gpus)
        self.launcher.auto = True
        self.counter = PendingCounter()
        self.controller._in_flight = self.counter.replica_loads
        self.scaler = Scaler(
            self.controller, self.counter.snapshot, config=CONFIG,
            scaling_of=scaling_of or (lambda key: scaling), clock=lambda: self.now,
        )
        self.controller.apply(intent(min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas))
        self.tickets = []
        self.changes = []

    def load(self, pending: int) -> None:
        """Hold exactly `pending` requests open against the endpoint."""
        while len(self.tickets) < pending:
            self.tickets.append(self.counter.track(str(KEY)).__enter__())
        while len(self.tickets) > pending:
            self.tickets.pop().close()

    async def step(self, until: float, pending: int) -> int:
        """Advance the clock second by second to `until` under `pending`; the containers then."""
        self.load(pending)
        while self.now < until:
            self.now += 1
            self.changes += [c.to_replicas for c in await self.scaler.tick()]
            await self.settle(rounds=2)
        return len(self.containers())

    async def close(self):
        self.load(0)
        await super().close()


@pytest.fixture
async def world():
    worlds = []

    def make(scaling, **kw):
        worlds.append(ScaledWorld(scaling, **kw))
        return worlds[-1]

    yield make
    for w in worlds:
        await w.close()


async def test_up_under_load_steady_without_flapping_then_down_after_stabilization(world):
    w = world(PolicyScaling(min_replicas=1, max_replicas=3, threshold=1.5))
    assert await w.step(1, pending=0) == 1
    assert await w.step(10, pending=6) == 3, w.changes  # 6 pending / 1.5 = 4 wanted, max 3
    assert await w.step(40, pending=3) == 3  # 3 / 1.5 = 2 recommended, 3 within the window: steady
    assert w.changes in ([2, 3], [3]), w.changes  # no flapping on the way
    # Load gone at t=40: the highest recommendation of the last 30 s is 2 (3 pending / 1.5).
    assert await w.step(55, pending=0) == 2
    assert await w.step(80, pending=0) == 1  # the window has passed: down to min
    assert w.changes[-1] == 1


async def test_to_zero_after_idle_and_back_on_a_wake(world):
    w = world(PolicyScaling(min_replicas=0, max_replicas=2, threshold=1.5, idle_timeout_min=3))  # 3 s
    assert await w.step(2, pending=1) == 1  # a long request: not idle
    assert await w.step(4, pending=1) == 1
    assert await w.step(10, pending=0) == 0  # idle 3 s after the last request
    assert w.changes[-1] == 0
    assert w.saved["u1"].idle_at is not None  # persisted: a restart keeps it at zero
    assert await w.step(12, pending=1) == 0  # pending alone (a held request) does not wake it...
    w.controller.wake(KEY)  # ...the proxy's wake for that request does
    assert await w.step(13, pending=1) == 1


async def test_capacity_bounds_scale_up(world):
    w = world(PolicyScaling(min_replicas=1, max_replicas=4, threshold=1.0), gpus=2)
    w.launcher.gpus_per_replica = 1
    assert await w.step(5, pending=10) == 2  # wanted 4, but the host has GPUs for two
    assert "wants 4 replicas, waiting for capacity: no free GPUs" in w.status().message  # what is missing


async def test_a_quota_bounds_scale_up_and_the_status_names_it(world):
    w = world(PolicyScaling(min_replicas=1, max_replicas=4, threshold=1.0))
    w.launcher.cpus_per_replica = 1  # the host has 64 CPUs: only the namespace's quota binds
    w.controller.set_quota("acme", Quota(cpus=2))
    assert await w.step(5, pending=10) == 2
    assert w.status().message == (
        "2/2 replicas ready; wants 4 replicas, waiting for capacity: namespace acme's quota of 2 CPUs is reached "
        "(2 CPUs in use by 2 replicas; this endpoint's x1 instance needs 1 CPU)")


async def test_paused_endpoints_are_left_alone(world):
    w = world(PolicyScaling(min_replicas=1, max_replicas=3, threshold=1.5))
    w.change(paused=True)
    await w.settle()
    assert await w.step(5, pending=9) == 0
    assert w.changes == []


async def test_a_round_that_fails_for_one_endpoint_skips_only_that_one(world):
    good = PolicyScaling(min_replicas=1, max_replicas=3, threshold=1.5)
    bad = PolicyScaling(min_replicas=1, max_replicas=3, threshold=math.nan)  # what a NaN threshold did
    other = EndpointKey("acme", "broken")

    def scaling_of(key):
        if key == other:
            raise ValueError("bad data")
        return good if key == KEY else bad

    w = world(good, scaling_of=scaling_of)
    w.controller.apply(intent(key=other, uid="u2"))
    assert await w.step(10, pending=6) == 3  # KEY scales although the other endpoint's round raises
    assert w.scaler.failures.labels(str(other))._value.get() > 0
