"""An endpoint whose replica cannot be placed (the host's CPUs are held by others): it waits as
`pending` with the reason, records the wait as an event once, and its route says why, so that
the proxy answers its callers at once instead of holding them for nothing. The controller with
the fake runtime, and the readiness gate on its own."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from autoscaler.model.state import State
from engines.capacity import GIB, HostCapacity
from engines.runtime import EndpointKey
from proxy.core.control import AuthType, InMemoryControlPlane, Replica, RouteEntry
from proxy.core.errors import Unavailable
from proxy.core.hold import ReadinessGate
from tests.control_world import World, intent
from tests.proxy_harness import until

A, B, C = (EndpointKey("acme", n) for n in ("a", "b", "c"))
NO_CPU = "no free CPUs for this endpoint's x1 instance (it needs 1 CPU; 2 of 2 in use by 2 replicas)"


@pytest.fixture
async def two_cpus():
    w = World()
    w.controller.capacity = w.capacity = HostCapacity(w.allocator, cpu_count=2, memory_bytes=64 * GIB)
    w.launcher.cpus_per_replica = 1
    w.launcher.auto = True
    yield w
    await w.close()


def waits(w: World, uid: str) -> list[str]:
    return [e.reason for e in w.controller.events.list(uid) if e.kind == "waiting_for_capacity"]


async def test_a_third_x1_endpoint_on_two_cpus_is_pending_with_the_reason_and_one_event(two_cpus):
    w = two_cpus
    for key, uid in ((A, "ua"), (B, "ub")):
        w.controller.apply(intent(key, uid=uid, min_replicas=1, max_replicas=1))
    await w.settle()
    assert w.status(A).state == w.status(B).state == State.RUNNING
    assert w.routes.lookup("acme", "a").no_capacity == ""  # it has its replica

    w.controller.apply(intent(C, uid="uc", min_replicas=1, max_replicas=1))
    for _ in range(3):
        await w.settle()
        w.now += 5
    status = w.status(C)
    assert (status.state, status.message) == (State.PENDING, f"waiting for capacity: {NO_CPU}")
    assert w.statuses["uc"] == status
    assert waits(w, "uc") == [f"no replica can be placed now: {NO_CPU}; it starts once capacity is freed"]
    assert w.routes.lookup("acme", "c").no_capacity == NO_CPU


async def test_a_woken_endpoint_whose_cpu_went_to_another_says_why_it_cannot_wake(two_cpus):
    w = two_cpus
    for key, uid in ((A, "ua"), (B, "ub")):
        w.controller.apply(intent(key, uid=uid, min_replicas=0, max_replicas=1))
    await w.settle()
    w.controller.apply(intent(C, uid="uc", min_replicas=1, max_replicas=1))
    await w.settle()
    assert w.status(C).state == State.PENDING

    w.scale_to_zero(A)  # its CPU is freed once its container is gone, and c, waiting, takes it
    await w.settle(rounds=6)
    assert w.status(C).state == State.RUNNING
    assert w.status(A).state == State.SCALED_TO_ZERO
    assert w.routes.lookup("acme", "a").no_capacity == NO_CPU  # a request now learns why at once

    w.controller.wake(A)
    await w.settle()
    assert w.status(A).state == State.PENDING and NO_CPU in w.status(A).message
    assert len(waits(w, "ua")) == 1

    w.scale_to_zero(B)  # b's CPU goes to a, woken and waiting
    await w.settle(rounds=6)
    assert w.status(A).state == State.RUNNING
    assert w.routes.lookup("acme", "a").no_capacity == ""


# --- the proxy's side ---------------------------------------------------------------------------

ENTRY = RouteEntry("acme", "a", AuthType.PUBLIC)


def gate_for(control):
    return ReadinessGate(control, max_held_per_endpoint=100, retry_after_s=5, wake_retry_s=10.0, release_per_replica=8)


@pytest.mark.parametrize("hold_s", [None, 30.0])
async def test_a_wake_that_cannot_be_placed_is_answered_at_once_naming_the_capacity(hold_s):
    control = InMemoryControlPlane()
    entry = replace(ENTRY, no_capacity=NO_CPU)
    control.put(entry)
    gate = gate_for(control)
    with pytest.raises(Unavailable) as caught:
        await asyncio.wait_for(gate.ready_entry(entry, hold_s), 5)
    error = caught.value
    assert NO_CPU in error.message and error.status == 503 and error.cause == "no_capacity"
    assert error.retry_after_s == 5
    assert control.wakes == ["acme/a"]  # still woken: it starts once capacity is freed


async def test_held_requests_are_answered_when_the_wake_turns_out_not_to_fit():
    control = InMemoryControlPlane()
    control.put(ENTRY)
    gate = gate_for(control)
    tasks = [asyncio.create_task(gate.ready_entry(ENTRY, 30.0)) for _ in range(3)]
    await until(lambda: gate.held.get("acme/a") == 3)
    control.put(replace(ENTRY, no_capacity=NO_CPU))  # the owner found no room for the replica
    for task in tasks:
        with pytest.raises(Unavailable, match="no free CPUs"):
            await asyncio.wait_for(task, 5)
    assert gate.held == {}


async def test_a_replica_coming_or_ready_wins_over_no_capacity():
    control = InMemoryControlPlane()
    ready = replace(ENTRY, replicas=(Replica("r1", "127.0.0.1:1"),), no_capacity=NO_CPU)
    control.put(ready)
    assert await gate_for(control).ready_entry(ready, None) == ready


def test_workers_get_the_reason_too():
    from proxy.workers.codec import encode, to_worker
    from proxy.workers.messages import RouteChanged

    entry = replace(ENTRY, no_capacity=NO_CPU)
    assert to_worker(encode(RouteChanged(entry))) == RouteChanged(entry)


# --- whatever the order of events -----------------------------------------------------------------

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule  # noqa: E402

from autoscaler.control.planner import Phase  # noqa: E402
from tests.examples import examples  # noqa: E402

KEYS = [A, B, C]
CPUS = 2
which = st.integers(0, len(KEYS) - 1)


class FullHost(RuleBasedStateMachine):
    """Three x1 endpoints on a two-CPU host, created, scaled, put to zero and woken in any order.
    After each step has settled: the CPUs held never exceed the host's; no endpoint waits while a
    CPU is free; and one that waits, or has no replica and no room, says so the same way in its
    status and on its route, with one event per wait."""

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = World()
        self.world.controller.capacity = self.world.capacity = HostCapacity(self.world.allocator, CPUS, 64 * GIB)
        self.world.launcher.cpus_per_replica = 1
        self.world.launcher.auto = True
        self.generation = 1
        self.waits_seen: dict[str, int] = {}

    def teardown(self):
        self.loop.run_until_complete(self.world.close())
        self.loop.close()

    def settle(self):
        for _ in range(3):
            self.loop.run_until_complete(self.world.settle())
            self.world.now += 2

    def uid(self, k):
        return f"u{k}"

    @rule(k=which, low=st.integers(0, 1))
    def create_or_update(self, k, low):
        key = KEYS[k]
        self.generation += 1
        current = self.world.controller.intent(key)
        if current is None:
            self.world.controller.apply(intent(key, uid=self.uid(k), min_replicas=low, max_replicas=1))
        else:
            self.world.controller.apply(replace(current, generation=self.generation, min_replicas=low))
        self.settle()

    @rule(k=which)
    def scale_to_zero(self, k):
        if self.world.controller.intent(KEYS[k]) is not None:
            self.world.scale_to_zero(KEYS[k])
            self.settle()

    @rule(k=which)
    def wake(self, k):
        self.world.controller.wake(KEYS[k])
        self.settle()

    @invariant()
    def cpus_never_exceed_the_host(self):
        assert self.world.capacity.cpus_used() <= CPUS

    @invariant()
    def waiting_is_said_the_same_everywhere_and_never_with_a_free_cpu(self):
        controller, routes = self.world.controller, self.world.routes
        free, _ = self.world.capacity.free(self.world.launcher.needs(None))
        for k, key in enumerate(KEYS):
            owner = controller._owners.get(key)
            if owner is None:
                continue
            live = owner.slots_in(Phase.STARTING, Phase.READY)
            status, entry = owner.status(), routes.lookup(key.namespace, key.name)
            if owner.wanted() > len(live):
                assert free == 0, f"{key} waits while a CPU is free"
            if not owner.slots:
                assert bool(entry.no_capacity) == (free == 0), (key, entry.no_capacity, free)
            if owner.wanted() > 0 and not live:
                assert status.state == State.PENDING and "waiting for capacity" in status.message, (key, status)
            waits = len([e for e in controller.events.list(self.uid(k), limit=1000) if e.kind == "waiting_for_capacity"])
            assert waits <= self.waits_seen.get(key.name, 0) + 1  # at most one new wait per step
            self.waits_seen[key.name] = waits


FullHost.TestCase.settings = settings(max_examples=examples(40), stateful_step_count=12, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
test_a_full_host_whatever_the_order = FullHost.TestCase
