"""The reconciler's lifecycle, step by step: tick() with a launcher the test drives by hand."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from autoscaler.controller import Controller, Desired, Status, WaitingForCapacity
from autoscaler.state import State
from engines.runtime import EndpointKey, ReplicaInfo, ReplicaStatus
from proxy.control import AuthType, RouteState, RouteTable

from .proxy_harness import until

KEY = EndpointKey("acme", "e1")


class Launches:
    """A launcher whose starts the test finishes: ready(), fail() or leave hanging."""

    def __init__(self):
        self.pending: dict[str, asyncio.Future] = {}
        self.released: list[str] = []
        self.unhealthy: set[str] = set()
        self.ports = itertools.count(9000)

    async def launch(self, desired, replica_id, report):
        report(f"starting {replica_id}")
        future = self.pending[replica_id] = asyncio.get_running_loop().create_future()
        return await future

    def release(self, replica_id):
        self.released.append(replica_id)

    async def healthy(self, replica):
        return replica.replica_id not in self.unhealthy

    def ready(self, replica_id, revision=1):
        info = ReplicaInfo(
            replica_id, KEY, str(revision), f"c-{replica_id}", f"endpointd-acme-e1-{replica_id}",
            ReplicaStatus.RUNNING, f"127.0.0.1:{next(self.ports)}", "/health",
        )
        self.pending.pop(replica_id).set_result(info)

    def fail(self, replica_id, error):
        self.pending.pop(replica_id).set_exception(error)


class StopsRecorded:
    """The two runtime calls the controller makes itself: stop, and the death events."""

    def __init__(self):
        self.stopped: list[str] = []

    async def stop(self, replica_id, grace_s):
        self.stopped.append(replica_id)


@pytest.fixture
async def world():
    routes = RouteTable()
    launches = Launches()
    runtime = StopsRecorded()
    statuses: list[Status] = []
    in_flight: dict[str, dict[str, int]] = {}
    now = [0.0]
    ids = (f"r{i}" for i in itertools.count(1))

    async def on_status(key, status):
        statuses.append(status)

    async def probe(desired):
        return True

    controller = Controller(
        runtime, launches, routes,
        in_flight=lambda key: in_flight.get(key, {}),
        on_status=on_status, probe=probe, drain_grace_s=5.0, clock=lambda: now[0],
        new_id=lambda: next(ids),
    )

    class World:
        pass

    w = World()
    w.routes, w.launches, w.runtime, w.statuses, w.in_flight, w.now, w.controller = (
        routes, launches, runtime, statuses, in_flight, now, controller,
    )
    yield w
    await controller.close()


def desired(**kw) -> Desired:
    base = dict(key=KEY, revision=1, auth=AuthType.PUBLIC, health_route="/health", min_replicas=1, max_replicas=2, target=1)
    base.update(kw)
    return Desired(**base)


async def settle(w):
    """Let the controller's tasks run, reconcile, and let the tasks it started run."""
    for _ in range(5):
        await asyncio.sleep(0)
    result = await w.controller.tick()
    for _ in range(5):
        await asyncio.sleep(0)
    return result


def ready_ids(w):
    entry = w.routes.lookup("acme", "e1")
    return sorted(r.id for r in entry.replicas) if entry else []


async def test_create_starts_then_runs_once_ready_and_verified(world):
    w = world
    w.controller.set_desired(desired(target=2))
    assert w.controller.status(KEY).state == State.PENDING
    result = await settle(w)
    assert result.started == ["r1", "r2"]
    await settle(w)
    assert w.controller.status(KEY).state == State.INITIALIZING
    assert w.controller.status(KEY).message == "starting r2"
    w.launches.ready("r1")
    await settle(w)
    await settle(w)  # the proxy probe runs as its own task
    assert ready_ids(w) == ["r1"]
    status = w.controller.status(KEY)
    assert (status.state, status.ready, status.target) == (State.RUNNING, 1, 2)
    assert w.statuses[-1] == status  # reported to the store


async def test_start_failures_back_off_then_fail_with_the_reason(world):
    w = world
    w.controller.set_desired(desired())
    for attempt in range(1, 4):
        result = await settle(w)
        assert result.started == [f"r{attempt}"]
        w.launches.fail(f"r{attempt}", RuntimeError(f"exit code 3; last logs: boom {attempt}"))
        await settle(w)
        assert f"r{attempt}" in w.runtime.stopped  # the dead container is removed
        if attempt < 3:
            assert (await settle(w)).started == []  # backing off: nothing before retry_at
            w.now[0] += 2 ** (attempt - 1)  # 1 s, then 2 s
    status = w.controller.status(KEY)
    assert status.state == State.FAILED
    assert "exit code 3; last logs: boom 3" in status.message
    assert w.routes.lookup("acme", "e1").state == RouteState.FAILED
    w.now[0] += 1000
    assert (await settle(w)).started == []  # failed stays failed until the user changes something


async def test_waiting_for_capacity_is_not_a_failure(world):
    w = world
    w.controller.set_desired(desired())
    await settle(w)
    w.launches.fail("r1", WaitingForCapacity("waiting for capacity: needs 1 nvidia-l4, 0 free of 1"))
    await settle(w)
    status = w.controller.status(KEY)
    assert status.state == State.INITIALIZING
    assert "waiting for capacity" in status.message
    w.now[0] += 5
    assert (await settle(w)).started == ["r2"]


async def test_scale_down_drains_the_least_busy_replica_then_stops_it(world):
    w = world
    w.controller.set_desired(desired(target=2))
    await settle(w)
    w.launches.ready("r1")
    w.launches.ready("r2")
    await settle(w)
    w.in_flight["acme/e1"] = {"r1": 3, "r2": 1}
    w.controller.set_desired(desired(target=1))
    result = await settle(w)
    assert result.drained == ["r2"]
    assert ready_ids(w) == ["r1"]  # no new requests for r2 from now on
    await settle(w)
    assert "r2" not in w.runtime.stopped  # it still has a request in flight
    w.in_flight["acme/e1"] = {"r1": 3}
    await until(lambda: "r2" in w.runtime.stopped)
    assert "r2" in w.launches.released


async def test_drain_gives_up_after_the_grace_period(world):
    w = world
    w.controller.set_desired(desired())
    await settle(w)
    w.launches.ready("r1")
    await settle(w)
    w.in_flight["acme/e1"] = {"r1": 1}  # a request that never ends
    w.controller.set_desired(desired(target=0, min_replicas=0))
    await settle(w)
    await settle(w)
    assert w.runtime.stopped == []
    w.now[0] += 5.0  # drain_grace_s
    await until(lambda: w.runtime.stopped == ["r1"])


async def test_scale_to_zero_then_wake(world):
    w = world
    w.controller.set_desired(desired(min_replicas=0))
    await settle(w)
    w.launches.ready("r1")
    await settle(w)
    w.controller.set_desired(desired(min_replicas=0, target=0))
    await settle(w)
    await until(lambda: w.runtime.stopped == ["r1"])
    await settle(w)
    assert w.controller.status(KEY).state == State.SCALED_TO_ZERO
    entry = w.routes.lookup("acme", "e1")
    assert entry.state == RouteState.SERVING and entry.replicas == ()  # the proxy will wake it
    w.controller.wake(KEY)
    w.controller.wake(KEY)  # a second wake while waking changes nothing
    assert (await settle(w)).started == ["r2"]


async def test_pause_refuses_requests_and_wake_does_nothing(world):
    w = world
    w.controller.set_desired(desired())
    await settle(w)
    w.launches.ready("r1")
    await settle(w)
    w.controller.set_desired(desired(paused=True))
    result = await settle(w)
    assert result.drained == ["r1"]
    assert w.routes.lookup("acme", "e1").state == RouteState.PAUSED
    assert w.controller.status(KEY).state == State.PAUSED
    w.controller.wake(KEY)
    assert (await settle(w)).started == []


async def test_rolling_update_keeps_old_replicas_until_new_ones_are_ready(world):
    w = world
    w.controller.set_desired(desired())
    await settle(w)
    w.launches.ready("r1")
    await settle(w)
    w.controller.set_desired(desired(revision=2))
    result = await settle(w)
    assert result.started == ["r2"] and result.drained == []
    assert w.controller.status(KEY).state == State.UPDATING
    assert ready_ids(w) == ["r1"]  # the old replica serves during the roll
    w.launches.ready("r2", revision=2)
    result = await settle(w)
    assert result.drained == ["r1"]
    assert ready_ids(w) == ["r2"]
    await until(lambda: w.runtime.stopped == ["r1"])
    await settle(w)
    assert w.controller.status(KEY).state == State.RUNNING


async def test_failed_update_keeps_the_old_version_serving(world):
    w = world
    w.controller.set_desired(desired())
    await settle(w)
    w.launches.ready("r1")
    await settle(w)
    w.controller.set_desired(desired(revision=2))
    for attempt in range(2, 5):
        await settle(w)
        w.launches.fail(f"r{attempt}", RuntimeError("image not found"))
        await settle(w)
        w.now[0] += 60
    await settle(w)
    status = w.controller.status(KEY)
    assert status.state == State.UPDATE_FAILED
    assert "image not found" in status.message
    assert ready_ids(w) == ["r1"]
    assert "r1" not in w.runtime.stopped


async def test_a_replica_that_dies_is_replaced(world):
    w = world
    w.controller.set_desired(desired())
    await settle(w)
    w.launches.ready("r1")
    await settle(w)
    w.controller.replica_died("r1", 137)
    assert ready_ids(w) == []  # out of service at once
    result = await settle(w)
    assert result.started == ["r2"]


async def test_delete_drains_everything_and_forgets_the_endpoint(world):
    w = world
    w.controller.set_desired(desired())
    await settle(w)
    w.launches.ready("r1")
    await settle(w)
    w.controller.delete(KEY)
    assert w.routes.lookup("acme", "e1") is None
    await settle(w)
    await until(lambda: w.runtime.stopped == ["r1"])
    await settle(w)
    assert w.controller.status(KEY) is None


async def test_adopt_keeps_current_containers_and_stops_the_rest(world):
    w = world
    w.controller.set_desired(desired(revision=2))

    def info(rid, revision, endpoint=KEY, status=ReplicaStatus.RUNNING):
        return ReplicaInfo(rid, endpoint, str(revision), "c", "n", status, "127.0.0.1:9999", "/health")

    w.launches.unhealthy.add("sick")
    adopted = await w.controller.adopt([
        info("keep", 2),
        info("sick", 2),  # running, current, but not answering its health route
        info("old", 1),
        info("dead", 2, status=ReplicaStatus.EXITED),
        info("orphan", 2, endpoint=EndpointKey("acme", "gone")),
    ])
    assert adopted == ["keep"]
    assert sorted(w.runtime.stopped) == ["dead", "old", "orphan", "sick"]
    assert ready_ids(w) == ["keep"]
    assert (await settle(w)).started == []  # nothing healthy is restarted; target 1 is met
