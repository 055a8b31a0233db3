"""The wake is re-armed whenever an endpoint returns to zero, by every path: a start cancelled by
a user's scale-to-zero, a scale-to-zero processed together with the wake, an idle scale-down,
pause and resume, and in a worker process that hears of the zero late. The real readiness gates
and the real controller (fake runtime, hand-finished launches); the time-based retry of a wake is
set beyond the tests, so only the re-arming can wake the endpoint again."""

from __future__ import annotations

import asyncio

import pytest

from proxy.core.errors import EndpointPaused, Unavailable
from tests.control_world import KEY, World, intent
from tests.wake_processes import Processes


class Setup:
    """The main process's gate over the controller's route table (as in `endpointd serve`), and
    one worker process's gate over its copy of the routes, which the test delivers by hand."""

    def __init__(self) -> None:
        self.procs = Processes(1, clock=lambda: self.world.now, wall=lambda: self.world.wall_now)
        self.routes, self.gate = self.procs.process(0)
        self.worker_routes, self.worker_gate = self.procs.process(1)
        self.world = World(routes=self.routes)
        self.procs.bind(self.world.controller.wake)
        self.held: list[asyncio.Task] = []

    async def start(self, **kw) -> None:
        self.world.controller.apply(intent(min_replicas=0, max_replicas=1, **kw))
        await self.world.settle()
        self.deliver_routes()

    def deliver_routes(self) -> None:
        self.procs.deliver_routes(1)

    def deliver_wakes(self) -> None:
        self.procs.deliver_wakes(1)

    async def request(self, *, held: bool, worker: bool = False) -> None:
        """A client request that finds no ready replica, a moment after the last event."""
        self.world.wall_now += 0.01
        control, gate = (self.worker_routes, self.worker_gate) if worker else (self.routes, self.gate)
        entry = control.lookup(KEY.namespace, KEY.name)
        assert not entry.replicas
        if held:
            self.held.append(asyncio.create_task(gate.ready_entry(entry, 1e6)))
            await asyncio.sleep(0)
        else:
            with pytest.raises(Unavailable, match="is starting up"):
                await gate.ready_entry(entry, None)

    def scale_to_zero(self) -> None:
        self.world.scale_to_zero()

    def wanted(self) -> int:
        return self.world.controller.wanted(KEY)

    async def cancelled_wake(self) -> None:
        """A request wakes the endpoint; a user's scale-to-zero cancels the start it asked for."""
        await self.request(held=False)
        await self.world.settle()
        assert self.wanted() == 1 and len(self.world.launcher.gates) == 1
        self.scale_to_zero()
        await self.world.settle()
        assert self.wanted() == 0 and not self.world.launcher.gates and not self.world.containers()

    async def served(self) -> None:
        """The start a wake asked for becomes ready: every held request gets the replica."""
        (rid,) = self.world.launcher.gates
        self.world.launcher.ready(rid)
        await self.world.settle()
        entries = await asyncio.gather(*self.held)
        assert all(e.replicas for e in entries)
        self.held.clear()

    async def close(self) -> None:
        for task in self.held:
            task.cancel()
        await asyncio.gather(*self.held, return_exceptions=True)
        await self.world.close()


@pytest.fixture
async def s():
    setup = Setup()
    await setup.start()
    setup.scale_to_zero()
    await setup.world.settle()
    setup.deliver_routes()
    assert setup.wanted() == 0
    yield setup
    await setup.close()


async def test_cancel_a_request_after_a_start_cancelled_by_a_scale_to_zero_wakes_it(s):
    await s.cancelled_wake()
    await s.request(held=True)
    await s.world.settle()
    assert s.wanted() == 1  # the issue: 0 here, and every later request held in vain
    await s.served()
    # Unheld requests wake it too, as often as it is put back to zero during a start.
    for _ in range(3):
        s.scale_to_zero()
        await s.world.settle()
        await s.cancelled_wake()
        await s.request(held=False)
        await s.world.settle()
        assert s.wanted() == 1
        (rid,) = s.world.launcher.gates
        s.world.launcher.ready(rid)
        await s.world.settle()


async def test_user_scale_to_zero_in_the_same_step_as_the_wake_is_followed_by_a_new_wake(s):
    await s.request(held=False)  # its wake is posted, not yet processed…
    s.scale_to_zero()  # …and the user's scale-to-zero lands in the same step: no start is made
    await s.world.settle()
    assert s.wanted() == 0 and not s.world.launcher.gates
    await s.request(held=True)
    await s.world.settle()
    assert s.wanted() == 1
    await s.served()


async def test_a_request_before_the_owner_has_processed_the_scale_to_zero_wakes_it_after(s):
    await s.request(held=False)
    await s.world.settle()
    assert s.wanted() == 1
    await s.request(held=False)  # while it starts: this process has asked for this state already
    s.scale_to_zero()  # the API call has returned; the owner processes it at its next step
    await s.request(held=True)  # deduplicated: this process sees the endpoint still waking
    await s.world.settle()
    assert s.wanted() == 1  # woken again once the zero is published, since this came after it
    await s.served()


async def test_user_scale_to_zero_is_not_undone_by_requests_held_from_before_it(s):
    await s.request(held=True)
    await s.world.settle()
    assert s.wanted() == 1
    s.scale_to_zero()  # the held request arrived before this: it does not undo it
    await s.world.settle()
    assert s.wanted() == 0 and not s.world.launcher.gates
    await s.request(held=True)  # this one arrives after it: it wakes the endpoint
    await s.world.settle()
    assert s.wanted() == 1
    await s.served()  # and both are served


async def test_idle_scale_down_during_a_start_rearms_the_wake(s):
    await s.request(held=False)
    await s.world.settle()
    assert s.wanted() == 1
    s.world.wall_now += 1
    s.world.controller.recommend(KEY, 0, "idle")  # min 0: an idle scale-down, the start cancelled
    await s.world.settle()
    assert s.wanted() == 0 and not s.world.launcher.gates
    await s.request(held=True)
    await s.world.settle()
    assert s.wanted() == 1
    await s.served()


async def test_pause_and_resume_rearm_the_wake(s):
    await s.request(held=False)
    await s.world.settle()
    s.world.change(paused=True)  # the start is cancelled
    await s.world.settle()
    entry = s.routes.lookup(KEY.namespace, KEY.name)
    with pytest.raises(EndpointPaused):
        await s.gate.ready_entry(entry, 1e6)
    s.world.change(paused=False, zeroed_at=None, resumed=True)  # a resume wakes it by itself
    await s.world.settle()
    assert s.wanted() == 1 and len(s.world.launcher.gates) == 1
    s.scale_to_zero()
    await s.world.settle()
    assert s.wanted() == 0
    await s.request(held=True)
    await s.world.settle()
    assert s.wanted() == 1
    await s.served()


async def test_a_worker_that_hears_of_the_zero_late_wakes_it_when_it_does(s):
    await s.request(held=False, worker=True)
    s.deliver_wakes()
    await s.world.settle()
    assert s.wanted() == 1
    s.scale_to_zero()
    await s.world.settle()
    assert s.wanted() == 0
    # A request after the scale-to-zero reaches the worker before the new route does: the
    # worker, which already woke the endpoint, holds it without asking again…
    await s.request(held=True, worker=True)
    s.deliver_wakes()
    await s.world.settle()
    # …and asks when it hears of the zero.
    s.deliver_routes()
    s.deliver_wakes()
    await s.world.settle()
    assert s.wanted() == 1
    (rid,) = s.world.launcher.gates
    s.world.launcher.ready(rid)
    await s.world.settle()
    s.deliver_routes()
    entries = await asyncio.gather(*s.held)
    assert all(e.replicas for e in entries)
    s.held.clear()
