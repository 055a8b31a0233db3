"""The controller and its owners, step by step: tick() with the fake runtime, a launcher the test
finishes by hand and an injected clock. The numbered defects are those of the control-plane
issue, each reproduced here first."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler.control.owner import MAX_START_FAILURES
from autoscaler.control.planner import Phase
from autoscaler.model.intent import Signals
from autoscaler.model.state import State
from engines.runtime import ContainerStatus, EndpointKey, ReplicaInfo
from proxy.core.control import RouteState
from tests.control_world import KEY, World, intent


@pytest.fixture
async def world():
    w = World()
    yield w
    await w.close()


async def running(w: World, **kw) -> str:
    """Create the endpoint and bring its first replica up; returns the replica id."""
    w.controller.apply(intent(**kw))
    await w.settle()
    (rid,) = w.launcher.gates
    w.launcher.ready(rid)
    await w.settle()
    return rid


async def test_create_starts_then_runs_once_ready_and_verified(world):
    w = world
    w.controller.apply(intent(min_replicas=2))
    assert w.status().state == State.PENDING
    result = await w.settle()
    assert result.started == ["r1", "r2"]
    assert w.status().state == State.INITIALIZING
    assert w.status().message == "starting r2"
    assert w.routes.lookup("acme", "e1").coming == 2
    w.launcher.ready("r1")
    await w.settle()
    assert w.ready_ids() == ["r1"]
    status = w.status()
    assert (status.state, status.ready, status.target) == (State.RUNNING, 1, 2)
    assert w.statuses["u1"] == status  # saved to the store
    assert w.routes.lookup("acme", "e1").coming == 1


async def test_not_running_until_the_probe_through_the_proxy_answers(world):
    w = world
    w.probe_ok = False
    await running(w)
    assert w.status().state == State.INITIALIZING
    w.probe_ok = True
    w.now += 1  # a failed probe is retried a second later, not in a hot loop
    await w.settle()
    assert w.status().state == State.RUNNING


async def test_start_failures_back_off_then_fail_and_resume_clears_it(world):
    w = world
    w.controller.apply(intent())
    for attempt in range(1, MAX_START_FAILURES + 1):
        result = await w.settle()
        assert result.started == [f"r{attempt}"]
        w.launcher.fail(f"r{attempt}", RuntimeError(f"exit code 3; last logs: boom {attempt}"))
        await w.settle()
        assert w.containers() == []  # the failed container is removed
        if attempt < MAX_START_FAILURES:
            assert (await w.settle()).started == []  # backing off: nothing before retry_at
            w.now += 2 ** (attempt - 1)
    assert w.status().state == State.FAILED
    assert "boom 3" in w.status().message
    assert w.routes.lookup("acme", "e1").state == RouteState.FAILED
    w.now += 1000
    assert (await w.settle()).started == []  # failed stays failed...
    w.change(resumed=True)  # ...until a user resumes it
    assert (await w.settle()).started == ["r4"]
    assert w.status().state == State.INITIALIZING


async def test_waiting_for_gpus_is_not_a_failure():
    w = World(gpus=1)
    w.launcher.gpus_per_replica = 1
    w.controller.apply(intent(max_replicas=2, min_replicas=2))
    result = await w.settle()
    assert result.started == ["r1"]  # one GPU: one replica
    assert w.allocator.holders == {"GPU-0": "r1"}
    assert "waiting for capacity" in w.status().message and w.status().state == State.INITIALIZING
    assert w.runtime.containers["r1"].spec.gpu_device_ids == ("GPU-0",)
    await w.close()


async def test_scale_down_drains_the_least_busy_replica_then_stops_it(world):
    w = world
    w.controller.apply(intent(min_replicas=2))
    await w.settle()
    w.launcher.ready("r1")
    w.launcher.ready("r2")
    await w.settle()
    w.in_flight["acme/e1"] = {"r1": 3, "r2": 1}
    w.change(min_replicas=1, max_replicas=1)
    result = await w.settle()
    assert result.drained == ["r2"]
    assert w.ready_ids() == ["r1"]  # no new requests for r2 from now on
    assert w.containers() == ["r1", "r2"]  # it still has a request in flight
    w.in_flight["acme/e1"] = {"r1": 3}
    await w.settle()
    assert w.containers() == ["r1"]


async def test_drain_gives_up_after_the_grace_period(world):
    w = world
    await running(w)
    w.in_flight["acme/e1"] = {"r1": 1}  # a request that never ends
    w.change(paused=True)
    await w.settle()
    assert w.containers() == ["r1"]
    w.now += 5.0  # drain_grace_s
    await w.settle()
    assert w.containers() == []


async def test_a_users_scale_to_zero_holds_until_a_request_wakes_it(world):
    w = world
    await running(w, min_replicas=0)
    w.scale_to_zero()
    await w.settle()
    assert w.containers() == [] and w.status().state == State.SCALED_TO_ZERO
    entry = w.routes.lookup("acme", "e1")
    assert entry.state == RouteState.SERVING and entry.replicas == ()  # the proxy will wake it
    # (3) Recommendations, whatever they say, do not undo it: only a request does.
    for replicas in (1, 2, 1):
        w.controller.recommend(KEY, replicas)
        assert (await w.settle()).started == []
    w.controller.wake(KEY)
    w.controller.wake(KEY)  # a second wake while waking changes nothing
    assert (await w.settle()).started == ["r2"]
    assert w.saved["u1"].woken_at > w.controller.intent(KEY).zeroed_at  # persisted


async def test_pause_refuses_requests_and_a_wake_does_nothing(world):
    w = world
    await running(w)
    w.change(paused=True)
    result = await w.settle()
    assert result.drained == ["r1"]
    assert w.routes.lookup("acme", "e1").state == RouteState.PAUSED
    assert w.status().state == State.PAUSED
    w.controller.wake(KEY)
    assert (await w.settle()).started == []
    w.change(paused=False, resumed=True)
    assert (await w.settle()).started == ["r2"]


async def test_rolling_update_keeps_old_replicas_until_new_ones_are_ready(world):
    w = world
    await running(w)
    w.change(revision=2)
    result = await w.settle()
    assert result.started == ["r2"] and result.drained == []
    assert w.status().state == State.UPDATING
    assert w.ready_ids() == ["r1"]  # the old replica serves during the roll
    w.launcher.ready("r2")
    await w.settle()
    assert w.ready_ids() == ["r2"]
    assert w.containers() == ["r2"]
    assert w.status().state == State.RUNNING


async def test_a_roll_says_what_its_new_replica_is_doing(world):
    """A roll's download or pull is as long a wait as a first start's: its status says it too."""
    w = world
    await running(w)
    w.change(revision=2)
    await w.settle()
    assert w.status().message == "rolling to revision 2: 0/1 new replicas ready; starting r2"
    w.launcher.ready("r2")
    await w.settle()
    assert w.status().state == State.RUNNING and "starting" not in w.status().message


async def test_failed_update_keeps_the_old_version_serving(world):
    w = world
    await running(w)
    w.change(revision=2)
    for attempt in range(2, 2 + MAX_START_FAILURES):
        await w.settle()
        w.launcher.fail(f"r{attempt}", RuntimeError("image not found"))
        await w.settle()
        w.now += 60
    await w.settle()
    assert w.status().state == State.UPDATE_FAILED
    assert "image not found" in w.status().message
    assert w.ready_ids() == ["r1"] and w.containers() == ["r1"]


async def test_a_replica_that_dies_is_replaced(world):
    w = world
    await running(w)
    w.runtime.kill("r1", 137)
    w.controller.replica_died("r1", 137)
    await w.settle(rounds=1)
    assert w.ready_ids() == []  # out of service at once
    await w.settle()
    assert w.containers() == ["r2"] and "r2" in w.launcher.gates  # removed, and replaced


# --- the defects of the control-plane issue, one test each -------------------------------


@pytest.mark.parametrize("action", ["delete", "pause", "scale_to_zero"])
async def test_1_stopping_a_starting_replica_cancels_its_launch_and_leaves_no_container(action):
    w = World(gpus=1)
    w.launcher.gpus_per_replica = 1
    w.controller.apply(intent(min_replicas=0))
    await w.settle()
    assert w.containers() == ["r1"] and w.allocator.holders == {"GPU-0": "r1"}  # created, not ready yet
    {"delete": lambda: w.controller.delete(KEY), "pause": lambda: w.change(paused=True),
     "scale_to_zero": w.scale_to_zero}[action]()
    await w.settle()
    assert w.containers() == []  # the launch's cancellation removed its own container
    assert w.allocator.holders == {}  # and only then its GPU was released
    assert "r1" not in w.launcher.gates
    assert await w.controller.sweep() == []  # nothing left for the sweep to find
    await w.close()


async def test_1_a_launch_cancelled_after_it_finished_still_removes_its_container(world):
    w = world
    w.controller.apply(intent(min_replicas=0))
    await w.settle()
    w.launcher.ready("r1")  # its result is posted, not yet read...
    w.scale_to_zero()  # ...when the scale-to-zero arrives in the same round
    await w.settle()
    assert w.containers() == []


async def test_2_never_more_containers_than_max_plus_surge(world):
    w = world
    w.launcher.auto = True
    await w.settle()
    w.controller.apply(intent(min_replicas=0, max_replicas=1))
    w.in_flight["acme/e1"] = {}
    for i in range(12):  # lifecycle calls back to back, as in the drill: 24 calls in 7 s
        w.in_flight["acme/e1"] = {rid: 1 for rid in w.containers()}  # every replica busy: drains wait
        (w.scale_to_zero if i % 2 == 0 else lambda: w.controller.wake(KEY))()
        await w.settle(rounds=1)
        assert len(w.containers()) <= 1, w.phases()
    w.in_flight["acme/e1"] = {}
    await w.settle()
    assert len(w.containers()) <= 1


async def test_2_a_draining_replica_is_reclaimed_before_a_new_one_starts(world):
    w = world
    await running(w, min_replicas=0, max_replicas=1)
    w.in_flight["acme/e1"] = {"r1": 1}
    w.scale_to_zero()
    await w.settle()
    assert w.phases() == {"r1": Phase.DRAINING}
    w.controller.wake(KEY)
    result = await w.settle()
    assert result.started == [] and w.phases() == {"r1": Phase.READY}
    assert w.ready_ids() == ["r1"]


async def test_3_requests_draining_on_the_old_replica_are_not_new_demand():
    from autoscaler.scaling.policy import PolicyConfig, PolicyScaling
    from autoscaler.scaling.scaler import Scaler
    from proxy.core.pending import PendingCounter

    w = World()
    counter = PendingCounter()
    w.controller._in_flight = counter.replica_loads
    scaler = Scaler(w.controller, counter.snapshot, config=PolicyConfig(window_s=2, stabilization_s=0),
                    scaling_of=lambda key: PolicyScaling(0, 2, idle_timeout_min=15), clock=lambda: w.now)
    await running(w, min_replicas=0)
    streams = [counter.track("acme/e1").__enter__() for _ in range(3)]
    for ticket in streams:
        ticket.bind("r1")  # three long streams on r1
    w.scale_to_zero()
    await w.settle()
    assert w.phases() == {"r1": Phase.DRAINING}
    for _ in range(5):  # the scaler sees 3 pending on a replica that is leaving
        w.now += 1
        await scaler.tick()
        assert (await w.settle()).started == []
    assert w.status().state == State.SCALED_TO_ZERO
    for ticket in streams:
        ticket.close()
    await w.close()


async def test_4_lifecycle_actions_during_a_start_are_not_failures(world):
    w = world
    w.controller.apply(intent(min_replicas=0))
    for _ in range(MAX_START_FAILURES + 1):
        await w.settle()
        assert w.launcher.gates  # a start is under way
        w.scale_to_zero()
        await w.settle()
        w.controller.wake(KEY)
    await w.settle()
    assert w.status().state == State.INITIALIZING
    assert w.controller._owners[KEY].failures == 0


async def test_5_delete_then_create_the_same_name_starts_a_fresh_endpoint(world):
    w = world
    await running(w)
    w.controller.delete(KEY)
    w.controller.apply(intent(uid="u2"))  # at once, while the old replica still drains
    await w.settle()
    assert "r2" in w.launcher.gates
    w.launcher.ready("r2")
    await w.settle()
    assert w.status().state == State.RUNNING and w.ready_ids() == ["r2"]
    assert w.containers() == ["r2"]


async def test_6_a_wake_survives_a_restart_and_an_unrelated_update(world):
    w = world
    await running(w, min_replicas=0)
    w.scale_to_zero()
    await w.settle()
    w.controller.wake(KEY)
    await w.settle()
    w.launcher.ready("r2")
    await w.settle()
    w.change(spec={"tags": ["only tags changed"]})  # an unrelated PUT
    await w.settle()
    assert w.ready_ids() == ["r2"] and w.containers() == ["r2"]
    # A restart: a new controller from what the store holds, finding the running container.
    restarted = World(runtime=w.runtime)
    restarted.controller.apply(w.controller.intent(KEY), w.saved["u1"])
    assert await restarted.controller.adopt(await w.runtime.list()) == ["r2"]
    await restarted.settle()
    assert restarted.ready_ids() == ["r2"] and restarted.containers() == ["r2"]
    assert restarted.status().state == State.RUNNING
    await restarted.close()


async def test_7_a_deleted_endpoints_route_never_comes_back(world):
    w = world
    w.controller.apply(intent(domain="e1.example.com"))
    await w.settle()
    w.controller.delete(KEY)
    assert w.routes.lookup("acme", "e1") is None and w.routes.lookup_host("e1.example.com") is None
    await w.settle()
    assert w.routes.lookup("acme", "e1") is None and w.routes.lookup_host("e1.example.com") is None
    assert w.controller.status(KEY) is None


async def test_8_a_replica_that_stops_answering_is_replaced(world):
    w = world
    await running(w)
    w.launcher.unhealthy.add("r1")
    for _ in range(w.controller.liveness_failures - 1):
        await w.controller.check_liveness()
        await w.settle()
        assert w.ready_ids() == ["r1"]  # one failed check is not enough
    await w.controller.check_liveness()
    await w.settle()
    assert w.ready_ids() == [] and "r1" not in w.containers()
    assert "r2" in w.launcher.gates  # replaced


async def test_10_a_roll_on_a_full_gpu_host_recreates():
    w = World(gpus=1)
    w.launcher.gpus_per_replica = 1
    await running(w, max_replicas=1)
    w.change(revision=2)
    await w.settle()
    assert w.containers() == ["r2"] and w.allocator.holders == {"GPU-0": "r2"}
    kinds = [(e.kind, e.replica) for e in w.controller.events.list("u1")]
    assert kinds.index(("replica_stopped", "r1")) < kinds.index(("replica_starting", "r2"))  # old first
    w.launcher.ready("r2")
    await w.settle()
    assert w.status().state == State.RUNNING and w.ready_ids() == ["r2"]
    await w.close()


async def test_11_gpus_are_adopted_after_a_restart():
    w = World(gpus=2)
    w.launcher.gpus_per_replica = 1
    w.controller.apply(intent(revision=2))
    found = [
        ReplicaInfo("keep", KEY, "2", "c1", "n1", ContainerStatus.RUNNING, "127.0.0.1:9", "/health", gpus=("GPU-0",)),
        ReplicaInfo("twice", KEY, "2", "c2", "n2", ContainerStatus.RUNNING, "127.0.0.1:9", "/health", gpus=("GPU-0",)),
    ]
    assert await w.controller.adopt(found) == ["keep"]
    assert w.allocator.holders == {"GPU-0": "keep"}
    await w.settle()
    assert w.allocator.holders == {"GPU-0": "keep"}  # nothing new started: the target is met
    await w.close()


async def test_adopt_keeps_healthy_containers_up_to_the_current_revision_and_stops_the_rest(world):
    w = world
    w.controller.apply(intent(revision=2, min_replicas=1, max_replicas=1))

    def info(rid, revision, endpoint=KEY, status=ContainerStatus.RUNNING):
        return ReplicaInfo(rid, endpoint, str(revision), "c", "n", status, "127.0.0.1:9999", "/health")

    found = [info("keep", 2), info("sick", 2), info("old", 1), info("dead", 2, status=ContainerStatus.EXITED),
             info("orphan", 2, endpoint=EndpointKey("acme", "gone")), info("future", 3), info("odd", "²")]
    w.launcher.unhealthy.add("sick")
    stopped = []
    w.runtime.stop = lambda rid, grace: stopped.append(rid) or _done()
    assert await w.controller.adopt(found) == ["keep", "old"]
    assert sorted(stopped) == ["dead", "future", "odd", "orphan", "sick"]
    # The current revision fills maxReplica: the roll had ended, the old replica drains.
    assert w.ready_ids() == ["keep"] and w.phases()["old"] is Phase.DRAINING
    assert (await w.settle()).started == []  # nothing healthy is restarted; the target is met


async def _done():
    return None


async def test_the_orphan_sweep_stops_containers_no_slot_owns(world):
    w = world
    await running(w)
    from engines.runtime import ContainerSpec

    await w.runtime.start(KEY, "stray", "1", ContainerSpec(image="echo"))  # e.g. left by a crash
    assert await w.controller.sweep() == ["stray"]
    assert w.containers() == ["r1"]


async def test_restart_keeps_a_scaled_up_endpoint_at_its_size_until_the_scaler_speaks(world):
    w = world
    w.launcher.auto = True
    w.controller.apply(intent(min_replicas=1, max_replicas=3))
    w.controller.recommend(KEY, 3)
    await w.settle()
    assert len(w.containers()) == 3
    restarted = World(runtime=w.runtime)
    restarted.controller.apply(intent(min_replicas=1, max_replicas=3), Signals())
    assert len(await restarted.controller.adopt(await w.runtime.list())) == 3
    await restarted.settle()
    assert len(restarted.containers()) == 3  # no scale-down before a full window of data
    await restarted.close()


async def test_2_a_replica_still_stopping_counts_toward_max(world):
    w = world
    await running(w, max_replicas=1)
    w.runtime.ignore_sigterm("r1")  # its stop takes the whole grace period
    w.runtime._sleep = lambda seconds: asyncio.sleep(3600)  # ...which does not pass in this test
    w.change(paused=True)
    await w.settle()
    assert w.phases() == {"r1": Phase.STOPPING}
    w.change(paused=False, resumed=True)
    assert (await w.settle()).started == []  # r1 is still there: starting r2 would make two
    assert w.containers() == ["r1"]


# --- restarts (issue 17, section 4) ------------------------------------------------------------


def restart(w: World) -> World:
    """A new controller from what the store holds (intent, signals, failures), on the same runtime."""
    restarted = World(runtime=w.runtime, id_prefix="s")
    restarted.controller.apply(w.controller.intent(KEY), w.saved.get("u1"), failure=w.failures.get("u1"))
    return restarted


async def failed_update(w: World) -> None:
    await running(w)
    w.change(revision=2)
    for attempt in range(2, 2 + MAX_START_FAILURES):
        await w.settle()
        w.launcher.fail(f"r{attempt}", RuntimeError("image not found"))
        await w.settle()
        w.now += 60
    await w.settle()
    assert w.status().state == State.UPDATE_FAILED


async def test_an_adopted_ready_replica_is_running_at_once(world):
    w = world
    await running(w)
    restarted = restart(w)
    restarted.probe_ok = False  # the proxy does not listen yet when endpointd adopts
    assert await restarted.controller.adopt(await w.runtime.list()) == ["r1"]
    assert restarted.status().state == State.RUNNING
    await restarted.settle()
    assert restarted.statuses["u1"].state == State.RUNNING  # and so it is saved
    await restarted.close()


async def test_a_restart_after_a_failed_update_keeps_the_old_revision_and_the_failure(world):
    w = world
    await failed_update(w)
    assert w.failures["u1"].revision == 2 and "image not found" in w.failures["u1"].error
    restarted = restart(w)
    assert await restarted.controller.adopt(await w.runtime.list()) == ["r1"]
    await restarted.settle()
    restarted.now += 600
    await restarted.settle()
    assert restarted.launcher.launched == []  # the failed revision is not retried
    status = restarted.status()
    assert status.state == State.UPDATE_FAILED and "image not found" in status.message
    assert restarted.ready_ids() == ["r1"] and restarted.containers() == ["r1"]
    # Resume tries the new revision again, and the failure is cleared from the store.
    restarted.change(resumed=True)
    await restarted.settle()
    assert restarted.launcher.launched == ["s1"] and "u1" not in restarted.failures
    assert restarted.ready_ids() == ["r1"]
    await restarted.close()


async def test_a_restart_during_a_roll_finishes_it_with_the_old_revision_serving(world):
    w = world
    await running(w)
    w.change(revision=2)
    await w.settle()
    assert w.containers() == ["r1", "r2"]
    restarted = restart(w)
    restarted.launcher.unhealthy.add("r2")  # the new replica was still loading
    assert await restarted.controller.adopt(await w.runtime.list()) == ["r1"]
    await restarted.settle()
    assert restarted.status().state == State.UPDATING and restarted.ready_ids() == ["r1"]
    (new,) = restarted.launcher.gates
    restarted.launcher.ready(new)
    await restarted.settle()
    assert restarted.ready_ids() == [new] and restarted.containers() == [new]
    assert restarted.status().state == State.RUNNING
    await restarted.close()


async def test_close_removes_what_a_deleted_endpoint_left(world):
    w = world
    await running(w)
    w.controller.delete(KEY)
    assert w.containers() == ["r1"] and KEY in await w.runtime.networks()
    await w.controller.close()
    assert w.containers() == [] and KEY not in await w.runtime.networks()


async def test_a_liveness_check_that_hangs_fails_after_one_interval():
    w = World(liveness_interval_s=0.05)
    await running(w)
    w.launcher.hung.add("r1")
    for _ in range(w.controller.liveness_failures):
        await asyncio.wait_for(w.controller.check_liveness(), 5)  # bounded by the interval, not by the probe
        await w.settle()
    assert w.ready_ids() == [] and "r1" not in w.containers()
    await w.close()
