"""An endpoint whose replica cannot be placed (the host's CPUs are held by others): it waits as
`pending` with the reason, records the wait as an event once, and its route says why, so that
the proxy answers its callers at once instead of holding them for nothing. The controller with
the fake runtime, and the readiness gate on its own."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from autoscaler.state import State
from engines.capacity import GIB, HostCapacity
from engines.runtime import EndpointKey
from proxy.control import AuthType, InMemoryControlPlane, Replica, RouteEntry
from proxy.errors import Unavailable
from proxy.hold import ReadinessGate

from .control_world import World, intent
from .proxy_harness import until

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
    from proxy.workers.codec import entry_in, entry_out

    entry = replace(ENTRY, no_capacity=NO_CPU)
    assert entry_in(entry_out(entry)) == entry
