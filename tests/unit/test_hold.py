"""The readiness gate on its own: how a held burst is released as replicas come up."""

import asyncio
from dataclasses import replace

import pytest

from proxy.core.control import AuthType, InMemoryControlPlane, Replica, RouteEntry
from proxy.core.errors import Unavailable
from proxy.core.hold import ReadinessGate, retry_after
from tests.proxy_harness import until

KEY = "acme/e1"
R0, R1 = Replica("r0", "127.0.0.1:1"), Replica("r1", "127.0.0.1:2")


@pytest.fixture
def control():
    control = InMemoryControlPlane()
    control.put(RouteEntry("acme", "e1", AuthType.PUBLIC))
    return control


def gate_for(control, per_replica=10):
    return ReadinessGate(
        control, max_held_per_endpoint=1000, retry_after_s=5, wake_retry_s=10.0, release_per_replica=per_replica
    )


async def hold(gate, control, n, hold_s=30.0):
    """`n` requests held at the gate, queued in creation order."""
    entry = control.lookup("acme", "e1")
    tasks = [asyncio.create_task(gate.ready_entry(entry, hold_s)) for _ in range(n)]
    await until(lambda: gate.held.get(KEY) == n)
    return tasks


def publish(control, *replicas, coming):
    control.put(replace(control.lookup("acme", "e1"), replicas=replicas, coming=coming))


def done(tasks):
    return sum(t.done() for t in tasks)


async def settled_at(gate, tasks, expected):
    """Release one more held request as a marker, and return how many had been released once it
    has: requests released together resume in the same loop turn, so none is still on its way."""
    gate.finished(KEY)
    await until(lambda: done(tasks) >= expected)
    return done(tasks)


async def finish(tasks):
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_no_more_replicas_coming_releases_every_held_request(control):
    gate = gate_for(control)
    tasks = await hold(gate, control, 50)
    publish(control, R0, coming=0)
    await until(lambda: done(tasks) == 50)  # released now, not as their 30 s holds run out
    entries = await asyncio.gather(*tasks)
    assert {e.replicas for e in entries} == {(R0,)}
    assert gate.held == {}


async def test_republishing_the_same_replicas_releases_nothing_new(control):
    gate = gate_for(control)
    tasks = await hold(gate, control, 30)
    publish(control, R0, coming=1)
    await until(lambda: done(tasks) == 10)
    publish(control, R0, coming=1)  # e.g. a status update of the endpoint: same replicas
    assert await settled_at(gate, tasks, 11) == 11
    publish(control, R0, R1, coming=1)  # r1 is new: its share
    assert await settled_at(gate, tasks, 22) == 22
    await finish(tasks)


async def test_shares_are_forgotten_when_the_endpoint_has_no_replica_again(control):
    gate = gate_for(control)
    tasks = await hold(gate, control, 30)
    publish(control, R0, coming=1)
    await until(lambda: done(tasks) == 10)
    publish(control, coming=1)  # r0 went away before the rest were served
    publish(control, R0, coming=1)  # and is back: a share again
    assert await settled_at(gate, tasks, 21) == 21
    await finish(tasks)


async def test_a_hold_that_expires_while_a_replica_is_ready_goes_to_it(control):
    gate = gate_for(control, per_replica=1)
    tasks = await hold(gate, control, 3, hold_s=0.5)
    publish(control, R0, coming=1)  # one released now; the other two wait for completions...
    entries = await asyncio.gather(*tasks)  # ...that never come: their deadline passes
    assert [e.replicas for e in entries] == [(R0,)] * 3
    assert gate.held == {}


async def test_a_hold_that_expires_with_no_replica_is_503(control):
    gate = gate_for(control)
    (task,) = await hold(gate, control, 1, hold_s=0.05)
    with pytest.raises(Unavailable, match="did not become ready within 0.05 s"):
        await task


async def test_a_probe_neither_wakes_nor_holds(control):
    gate = gate_for(control)
    with pytest.raises(Unavailable, match="no ready replica"):
        await gate.ready_entry(control.lookup("acme", "e1"), 30.0, demand=False)
    assert control.wakes == [] and gate.held == {}


@pytest.mark.parametrize(
    ("wake_s", "expected"),
    [(None, 5), (0.2, 1), (1.0, 1), (1.01, 2), (2.4, 3), (4.9, 5), (60.0, 5), (float("nan"), 5)],
)
def test_retry_after_is_the_observed_wake_rounded_up_within_1_and_the_cap(wake_s, expected):
    assert retry_after(wake_s, 5) == expected


async def test_a_cold_start_503_says_to_retry_after_the_endpoints_observed_wake(control):
    gate = gate_for(control)
    with pytest.raises(Unavailable, match="starting up") as before:
        await gate.ready_entry(control.lookup("acme", "e1"), None)
    assert before.value.retry_after_s == 5  # no wake observed yet: the configured value
    control.put(replace(control.lookup("acme", "e1"), wake_s=1.3))
    with pytest.raises(Unavailable, match="starting up") as after:
        await gate.ready_entry(control.lookup("acme", "e1"), None)
    assert after.value.retry_after_s == 2


async def test_a_sleeping_endpoint_holds_a_request_without_the_header_and_wakes_it(control):
    """The sleeping tier: no 503 to retry on; the request waits for the wake, up to the implicit hold."""
    woken = []
    control.wake = lambda namespace, name: woken.append(f"{namespace}/{name}")
    control.put(replace(control.lookup("acme", "e1"), sleeping=1))
    gate = ReadinessGate(control, max_held_per_endpoint=10, retry_after_s=5, wake_retry_s=10.0,
                         release_per_replica=8, implicit_hold_s=30.0)
    task = asyncio.create_task(gate.ready_entry(control.lookup("acme", "e1"), None))
    await until(lambda: gate.held.get(KEY) == 1)
    assert woken == [KEY]
    publish(control, R0, coming=0)
    assert (await task).replicas == (R0,)


async def test_the_implicit_hold_is_bounded_and_only_for_sleeping_endpoints(control):
    gate = ReadinessGate(control, max_held_per_endpoint=10, retry_after_s=5, wake_retry_s=10.0,
                         release_per_replica=8, implicit_hold_s=0.05)
    with pytest.raises(Unavailable) as cold:  # parked or cold: the reference's 503
        await gate.ready_entry(control.lookup("acme", "e1"), None)
    assert cold.value.cause == "cold_start"
    control.put(replace(control.lookup("acme", "e1"), sleeping=1))
    with pytest.raises(Unavailable) as late:  # a wake that does not come in time: 503, not a hang
        await gate.ready_entry(control.lookup("acme", "e1"), None)
    assert late.value.cause == "hold_timeout"
