"""Every wake from zero measured: its phases in the endpoint's events, its last wakes kept, and
their median on the route entry (the proxy's Retry-After)."""

from __future__ import annotations

import pytest

from autoscaler.control.owner import MAX_START_FAILURES
from autoscaler.control.wakes import WakeHistory, measure
from autoscaler.model.state import State
from tests.control_world import KEY, World, intent


@pytest.fixture
async def world():
    w = World()
    yield w
    await w.close()


async def at_zero(w: World) -> None:
    w.controller.apply(intent(min_replicas=0))
    await w.settle()
    (rid,) = w.launcher.gates
    w.launcher.ready(rid)
    await w.settle()
    w.scale_to_zero()
    await w.settle()
    assert w.containers() == []


async def wake(w: World, asked: float, ready: float) -> None:
    """A request's wake reaches the controller at `asked`; its replica passes readiness at `ready`."""
    w.now = asked
    w.controller.wake(KEY)
    await w.settle()
    (rid,) = w.launcher.gates
    w.now = ready
    w.launcher.ready(rid)
    await w.settle()
    assert w.ready_ids() == [rid]


def woke_events(w: World):
    return [e for e in w.controller.events.list("u1") if e.kind == "woke"]


def test_a_wake_is_split_into_phases_named_by_the_point_that_ends_each():
    record = measure(10.0, [("creating", 10.02), ("created", 10.32), ("started", 10.6), ("ready", 11.24)], 11.25)
    assert record.total_s == pytest.approx(1.25)
    assert [name for name, _ in record.phases] == ["prepare", "create", "start", "ready", "release"]
    assert [round(s, 2) for _, s in record.phases] == [0.02, 0.3, 0.28, 0.64, 0.01]
    assert record.describe() == "woke from cold in 1.25 s: prepare 0.02, create 0.30, start 0.28, ready 0.64, release 0.01"


def test_a_missing_mark_folds_its_phase_into_the_next():
    record = measure(0.0, [("started", 0.5), ("ready", 0.9)], 0.9)
    assert [(name, round(s, 2)) for name, s in record.phases] == [("start", 0.5), ("ready", 0.4), ("release", 0.0)]


def test_the_history_keeps_the_last_wakes_and_their_median():
    history = WakeHistory(kept=3)
    assert history.median_s() is None
    for total in (9.0, 1.0, 2.0, 4.0):  # the first falls out
        history.add(measure(0.0, [], total))
    assert [r.total_s for r in history.items()] == [1.0, 2.0, 4.0]
    assert history.median_s() == 2.0


async def test_each_wake_is_an_event_with_its_phases_and_its_median_goes_to_the_route_entry(world):
    w = world
    await at_zero(w)
    assert w.routes.lookup("acme", "e1").wake_s is None  # none observed yet: the proxy's cap applies
    await wake(w, asked=10.0, ready=10.75)
    (event,) = woke_events(w)
    assert event.reason == "woke from cold in 0.75 s: prepare 0.00, create 0.00, start 0.00, ready 0.75, release 0.00"
    assert event.inputs["seconds"] == 0.75 and event.inputs["phases"]["ready"] == 0.75
    assert w.routes.lookup("acme", "e1").wake_s == 0.75

    w.scale_to_zero()
    await w.settle()
    await wake(w, asked=20.0, ready=22.0)
    assert [e.inputs["seconds"] for e in woke_events(w)] == [0.75, 2.0]
    assert [r.total_s for r in w.controller.wakes(KEY)] == [0.75, 2.0]
    assert w.routes.lookup("acme", "e1").wake_s == pytest.approx(1.375)



async def test_a_wake_whose_replica_never_came_is_not_timed_by_a_later_start(world):
    w = world
    await at_zero(w)
    w.now = 5.0
    w.controller.wake(KEY)
    for _ in range(MAX_START_FAILURES):  # the wake's starts all fail: the endpoint is failed
        await w.settle()
        (rid,) = w.launcher.gates
        w.launcher.fail(rid, RuntimeError("engine crashed"))
        await w.settle()
        w.now += 100.0  # past the backoff
    assert w.status().state == State.FAILED
    w.change(resumed=True)  # a user's resume starts it again: no request is waiting on this start
    await w.settle()
    (rid,) = w.launcher.gates
    w.launcher.ready(rid)
    await w.settle()
    assert w.ready_ids() == [rid]
    assert woke_events(w) == [] and w.controller.wakes(KEY) == []
    assert w.routes.lookup("acme", "e1").wake_s is None
