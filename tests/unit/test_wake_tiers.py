"""The idle ladder in the owner: warm -> sleeping (sleepAfter) -> parked (at zero) -> cold, and
each wake from its tier, on the real Controller with the fake runtime and a hand launcher."""

from __future__ import annotations

import pytest

from autoscaler.control.planner import Phase
from autoscaler.model.state import State
from autoscaler.model.timelines import ReplicaState
from engines.runtime import ContainerStatus, EndpointKey
from tests.control_world import KEY, World, intent

PARK_TTL_S = 600.0


@pytest.fixture
async def world():
    w = World(park_ttl_s=PARK_TTL_S)
    w.launcher.auto = True
    yield w
    await w.close()


async def running(w: World, **kw) -> str:
    w.controller.apply(intent(min_replicas=0, max_replicas=2, **kw))
    await w.settle()
    (rid,) = w.ready_ids()
    return rid


def idle(w: World, key: EndpointKey = KEY) -> None:
    """The scaler's word after sleepAfter idle seconds: keep one replica, its engine may sleep."""
    w.controller.recommend(key, 1, "idle", sleep=True)


def events(w: World, kind: str) -> list:
    return [e for e in w.controller.events.list("u1") if e.kind == kind]


def timeline(w: World, rid: str) -> list[ReplicaState]:
    (record,) = [r for r in w.controller.replicas(KEY) if r.id == rid]
    return [state for state, _ in record.timeline]


async def test_an_idle_replica_sleeps_out_of_the_route_table_and_a_request_wakes_it(world):
    w = world
    rid = await running(w)
    idle(w)
    await w.settle()
    assert w.launcher.asleep == {rid} and w.phases() == {rid: Phase.SLEEPING}
    entry = w.routes.lookup("acme", "e1")
    assert entry.replicas == () and entry.sleeping == 1  # the proxy holds, without a 503
    status = w.status()
    assert (status.state, status.tier, status.ready) == (State.RUNNING, "sleeping", 1)
    assert w.containers() == [rid]  # its container, and so its GPUs, stay

    w.now = 50.0
    w.controller.wake(KEY)
    w.now = 50.3
    await w.settle()
    assert w.launcher.asleep == set() and w.ready_ids() == [rid]
    (woke,) = events(w, "woke")
    assert woke.inputs["tier"] == "sleeping" and woke.inputs["seconds"] == pytest.approx(0.3)
    assert list(woke.inputs["phases"]) == ["prepare", "wake", "ready", "release"]
    kinds = [e.kind for e in w.controller.events.list("u1")]
    assert kinds[kinds.index("replica_sleeping"):][:4] == ["replica_sleeping", "replica_asleep", "replica_waking", "woke"]
    assert timeline(w, rid)[-3:] == [ReplicaState.RUNNING, ReplicaState.SLEEPING, ReplicaState.RUNNING]
    assert w.status().tier == "warm"


async def test_a_replica_with_requests_in_flight_is_not_put_to_sleep(world):
    w = world
    rid = await running(w)
    w.in_flight["acme/e1"] = {rid: 1}
    idle(w)
    await w.settle()
    assert w.launcher.slept == [] and w.ready_ids() == [rid]


async def test_a_wake_asked_while_the_engine_goes_to_sleep_wakes_it_once_asleep(world):
    w = world
    w.launcher.hold_sleeps = True
    rid = await running(w)
    idle(w)
    await w.settle()
    assert rid in w.launcher.sleep_gates  # the engine was asked; its answer is not in yet
    w.controller.wake(KEY)
    await w.settle()
    assert w.ready_ids() == []  # not before its sleep ended: a wake cannot overtake it
    w.launcher.sleep_gates[rid].set_result(None)
    await w.settle()
    assert w.ready_ids() == [rid] and w.launcher.asleep == set()


async def test_an_engine_that_refuses_to_sleep_stays_awake_and_is_not_asked_again_until_busy(world):
    w = world
    w.launcher.sleep_error = RuntimeError("404 /sleep")
    rid = await running(w)
    idle(w)
    await w.settle()
    assert w.ready_ids() == [rid] and len(events(w, "replica_sleep_failed")) == 1
    idle(w)
    await w.settle()
    assert w.launcher.slept == [rid]
    w.controller.recommend(KEY, 1, "busy")  # activity: it may try again when next idle
    idle(w)
    await w.settle()
    assert w.launcher.slept == [rid, rid]


async def test_an_engine_that_does_not_wake_is_replaced(world):
    w = world
    rid = await running(w)
    idle(w)
    await w.settle()
    w.launcher.wake_error = RuntimeError("500 /wake_up")
    w.controller.wake(KEY)
    await w.settle(rounds=5)
    (new,) = w.ready_ids()
    assert new != rid and len(events(w, "replica_wake_failed")) == 1


async def test_an_engine_that_sleeps_by_itself_is_observed_and_stays_in_the_route_table(world):
    w = world
    w.launcher.self_sleeping = True
    rid = await running(w)
    idle(w)
    await w.settle()
    assert w.launcher.slept == []  # endpointd does not put it to sleep: llama.cpp does
    assert w.ready_ids() == [rid] and len(events(w, "replica_asleep")) == 0
    w.launcher.asleep.add(rid)  # its own idle timer fired
    idle(w)
    await w.settle()
    assert w.ready_ids() == [rid]  # a request goes straight to it and wakes it there
    assert w.status().tier == "sleeping" and len(events(w, "replica_asleep")) == 1
    assert timeline(w, rid)[-1] == ReplicaState.SLEEPING
    w.launcher.asleep.discard(rid)
    w.controller.recommend(KEY, 1, "busy")
    await w.settle()
    assert w.status().tier == "warm" and timeline(w, rid)[-1] == ReplicaState.RUNNING


async def test_at_zero_the_replica_is_parked_and_a_wake_starts_the_same_container_again(world):
    w = world
    rid = await running(w)
    w.scale_to_zero()
    await w.settle()
    assert w.phases() == {rid: Phase.PARKED}
    assert w.runtime.containers[rid].info.status is ContainerStatus.EXITED
    status = w.status()
    assert (status.state, status.tier) == (State.SCALED_TO_ZERO, "parked") and "1 parked" in status.message
    assert w.routes.lookup("acme", "e1").replicas == ()

    w.now = 100.0
    w.controller.wake(KEY)
    w.now = 100.25
    await w.settle()
    assert w.ready_ids() == [rid] and w.launcher.unparked == [rid] and w.launcher.launched == [rid]
    (woke,) = events(w, "woke")
    assert woke.inputs["tier"] == "parked"
    assert list(woke.inputs["phases"]) == ["prepare", "start", "ready", "release"]
    assert timeline(w, rid)[-3:] == [ReplicaState.PARKED, ReplicaState.INITIALIZING, ReplicaState.RUNNING]


@pytest.mark.parametrize("why", ["ttl", "revision", "pause", "delete"])
async def test_a_parked_container_is_removed_after_its_ttl_or_when_it_can_no_longer_serve(world, why):
    w = world
    rid = await running(w)
    w.scale_to_zero()
    await w.settle()
    assert w.phases() == {rid: Phase.PARKED}
    if why == "ttl":
        w.now += PARK_TTL_S
    elif why == "revision":
        w.change(revision=2)
    elif why == "pause":
        w.change(paused=True)
    else:
        w.controller.delete(KEY)
    await w.settle()
    assert w.containers() == [] and rid not in w.phases()
    if why != "delete":  # a deleted endpoint's events go with it
        assert len(events(w, "parked_removed")) == 1


async def test_a_revision_change_wakes_cold_not_from_an_old_parked_container(world):
    w = world
    rid = await running(w)
    w.scale_to_zero()
    await w.settle()
    w.change(revision=2)
    await w.settle()
    w.controller.wake(KEY)
    await w.settle()
    (new,) = w.ready_ids()
    assert new != rid and w.launcher.unparked == []


async def test_a_parked_container_that_does_not_start_again_gives_way_to_a_new_one(world):
    w = world
    rid = await running(w)
    w.scale_to_zero()
    await w.settle()
    w.runtime.fail_next_start("image gone")
    w.controller.wake(KEY)
    await w.settle(rounds=5)
    (new,) = w.ready_ids()
    assert new != rid and len(events(w, "replica_unpark_failed")) == 1
    assert w.status().state is State.RUNNING  # not a failure of the revision


async def test_without_park_ttl_at_zero_the_containers_are_removed():
    w = World(park_ttl_s=0.0)
    w.launcher.auto = True
    try:
        await running(w)
        w.scale_to_zero()
        await w.settle()
        assert w.containers() == [] and w.status().tier == "cold"
    finally:
        await w.close()


async def test_a_parked_replica_whose_gpu_another_endpoint_took_is_removed_and_wakes_cold():
    w = World(gpus=1, park_ttl_s=PARK_TTL_S)
    w.launcher.auto = True
    w.launcher.gpus_per_replica = 1
    other = EndpointKey("acme", "e2")
    try:
        rid = await running(w)
        w.scale_to_zero()
        await w.settle()
        assert w.phases() == {rid: Phase.PARKED} and w.allocator.holders == {}  # a stopped container holds none
        w.controller.apply(intent(key=other, uid="u2", min_replicas=1, max_replicas=1))
        await w.settle()
        assert len(w.ready_ids(other)) == 1  # it got the GPU
        assert w.phases() == {}  # the parked container could never start on it again: removed
        w.controller.wake(KEY)
        await w.settle()
        assert w.status().state is State.PENDING and "no free GPUs" in w.status().message
    finally:
        await w.close()


async def test_a_replica_is_not_put_to_sleep_before_its_route_answered_once(world):
    """An endpoint idle from its first second: sleeping before the probe through the proxy passed
    would leave it `initializing` for good (the probe needs a ready replica)."""
    w = world
    w.probe_ok = False
    rid = await running(w)
    idle(w)
    await w.settle()
    assert w.launcher.slept == [] and w.status().state is State.INITIALIZING
    w.probe_ok = True
    w.now += 5.0  # the probe's retry
    await w.settle()
    assert w.status().state is State.RUNNING
    idle(w)
    await w.settle()
    assert w.launcher.slept == [rid] and w.status().state is State.RUNNING


async def test_usage_meters_every_replica_that_holds_resources_and_no_parked_one(world):
    """Controller.holding(): what the usage meter counts replica-seconds of: starting, ready and
    sleeping replicas, and a deleted endpoint's while they drain; parked ones are listed apart."""
    w = world
    w.launcher.auto = False
    w.controller.apply(intent(min_replicas=0, max_replicas=2))
    await w.settle()
    (rid,) = w.phases()
    assert w.phases() == {rid: Phase.STARTING}
    [(held, holding, parked)] = w.controller.holding()
    assert (held.key, holding, parked) == (KEY, [rid], [])
    w.launcher.ready(rid)
    await w.settle()
    idle(w)
    await w.settle()
    assert w.phases() == {rid: Phase.SLEEPING} and w.controller.holding()[0][1:] == ([rid], [])
    w.scale_to_zero()
    await w.settle()
    assert w.phases() == {rid: Phase.PARKED} and w.controller.holding()[0][1:] == ([], [rid])


async def test_usage_meters_a_deleted_endpoints_replicas_until_they_are_gone(world):
    w = world
    rid = await running(w)
    w.in_flight["acme/e1"] = {rid: 1}  # a request still streams from it
    w.controller.delete(KEY)
    await w.settle()
    assert w.controller.keys() == [] and [h[1] for h in w.controller.holding()] == [[rid]]
    w.in_flight.clear()
    w.now += 10
    await w.settle()
    assert w.controller.holding() == []
