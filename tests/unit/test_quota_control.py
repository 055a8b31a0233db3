"""Quotas in the controller: every scale-up is bounded by the namespace's quota as well as by the
host, a replica that would pass it waits with a status, an event and a route that name the
quota, and what holds resources counts (starting, ready, sleeping, leaving; not parked). The real
Controller with the fake runtime (tests/control_world.py); a hypothesis state machine last."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from autoscaler.control.planner import Phase
from autoscaler.model.quotas import EPSILON, Quota, Use
from autoscaler.model.state import State
from engines.runtime import EndpointKey
from tests.control_world import World, intent
from tests.examples import examples

A1, A2, A3 = (EndpointKey("acme", n) for n in ("a1", "a2", "a3"))
B1 = EndpointKey("beta", "b1")
FULL = ("namespace acme's quota of 2 CPUs is reached (2 CPUs in use by 2 replicas; this endpoint's x1 instance "
        "needs 1 CPU)")


def x1_world(park_ttl_s: float = 0.0) -> World:
    w = World(park_ttl_s=park_ttl_s)  # 64 CPUs: the host never bounds these tests, the quota does
    w.launcher.cpus_per_replica = 1
    w.launcher.auto = True
    return w


@pytest.fixture
async def world():
    w = x1_world()
    w.controller.set_quota("acme", Quota(cpus=2))
    yield w
    await w.close()


def waits(w: World, uid: str) -> list[str]:
    return [e.reason for e in w.controller.events.list(uid) if e.kind == "waiting_for_capacity"]


async def settle(w: World, rounds: int = 3) -> None:
    for _ in range(rounds):
        await w.settle()
        w.now += 2


async def test_a_replica_beyond_the_quota_waits_naming_the_quota_while_another_namespace_runs(world):
    w = world
    for key, uid in ((A1, "a1"), (A2, "a2")):
        w.controller.apply(intent(key, uid=uid, min_replicas=1, max_replicas=3))
    w.controller.apply(intent(B1, uid="b1", min_replicas=4, max_replicas=4))
    await settle(w)
    assert w.controller.quota_use("acme") == Use(cpus=2, replicas=2)

    w.controller.apply(intent(A3, uid="a3", min_replicas=0, max_replicas=1))  # awake at create: wants 1
    await settle(w)
    status = w.status(A3)
    assert (status.state, status.message) == (State.PENDING, f"waiting for capacity: {FULL}")
    assert waits(w, "a3") == [f"no replica can be placed now: {FULL}; it starts once capacity is freed"]
    assert w.routes.lookup("acme", "a3").no_capacity == FULL  # the proxy answers a request at once with it
    assert w.containers(A3) == []

    w.controller.recommend(A1, 3, "busy")  # a scale-up: nothing starts beyond the quota
    await settle(w)
    assert len(w.containers(A1)) == 1 and waits(w, "a1") == [f"no replica can be placed now: {FULL}; it starts "
                                                              "once capacity is freed"]
    assert w.controller.replicas_can_run(A1) == 1  # what the scaler caps its recommendation at

    assert len(w.ready_ids(B1)) == 4 and w.status(B1).state == State.RUNNING  # beta has no quota
    assert w.controller.quota_use("beta") == Use(cpus=4, replicas=4)


async def test_a_raised_or_lifted_quota_starts_what_waited(world):
    w = world
    for key, uid in ((A1, "a1"), (A2, "a2"), (A3, "a3")):
        w.controller.apply(intent(key, uid=uid, min_replicas=1, max_replicas=2))
    await settle(w)
    assert sorted(len(w.ready_ids(k)) for k in (A1, A2, A3)) == [0, 1, 1]

    w.controller.set_quota("acme", Quota(cpus=3))
    await settle(w)
    assert [len(w.ready_ids(k)) for k in (A1, A2, A3)] == [1, 1, 1]
    assert all(w.status(k).state == State.RUNNING for k in (A1, A2, A3))

    w.controller.set_quota("acme", Quota(replicas=1))  # lowered below the use: nothing is stopped,
    await settle(w)
    assert [len(w.ready_ids(k)) for k in (A1, A2, A3)] == [1, 1, 1]
    w.controller.recommend(A1, 2, "busy")  # but nothing more starts
    await settle(w)
    assert len(w.containers(A1)) == 1 and w.controller.replicas_can_run(A1) == 1
    assert w.controller.capacity_of(w.controller.intent(A1)) == (
        0, "namespace acme's quota of 1 replica is reached (3 replicas in use)")

    w.controller.set_quota("acme", None)
    await settle(w)
    assert len(w.ready_ids(A1)) == 2


async def test_a_scaled_to_zero_endpoint_frees_its_share_and_waits_for_it_when_woken(world):
    w = world
    for key, uid in ((A1, "a1"), (A2, "a2")):
        w.controller.apply(intent(key, uid=uid, min_replicas=0, max_replicas=1))
    await settle(w)
    w.controller.apply(intent(A3, uid="a3", min_replicas=1, max_replicas=1))
    await settle(w)
    assert w.status(A3).state == State.PENDING

    w.scale_to_zero(A1)  # its CPU is the quota's again once its container is gone: a3 takes it
    await settle(w)
    assert w.status(A3).state == State.RUNNING and w.status(A1).state == State.SCALED_TO_ZERO
    assert w.routes.lookup("acme", "a1").no_capacity == FULL  # a request to a1 learns why at once

    w.controller.wake(A1)
    await settle(w)
    assert w.status(A1).state == State.PENDING and FULL in w.status(A1).message
    assert w.controller.quota_use("acme") == Use(cpus=2, replicas=2)


async def test_a_paused_endpoint_holds_nothing_and_a_deleted_one_holds_until_its_container_is_gone(world):
    w = world
    for key, uid in ((A1, "a1"), (A2, "a2")):
        w.controller.apply(intent(key, uid=uid, min_replicas=1, max_replicas=1))
    await settle(w)
    w.change(A1, paused=True)
    await settle(w)
    assert w.controller.quota_use("acme") == Use(cpus=1, replicas=1)
    w.controller.delete(A2)
    await settle(w)
    assert w.controller.quota_use("acme") == Use()


async def test_sleeping_replicas_count_and_parked_ones_do_not():
    w = x1_world(park_ttl_s=600.0)
    w.controller.set_quota("acme", Quota(replicas=1))
    try:
        w.controller.apply(intent(A1, uid="a1", min_replicas=0, max_replicas=1))
        await settle(w, 1)
        w.controller.recommend(A1, 1, "idle", sleep=True)  # sleepAfter: its engine sleeps, its resources stay
        await settle(w, 1)
        assert list(w.phases(A1).values()) == [Phase.SLEEPING]
        w.controller.apply(intent(A2, uid="a2", min_replicas=1, max_replicas=1))
        await settle(w)
        assert w.status(A2).state == State.PENDING and "quota of 1 replica is reached" in w.status(A2).message

        w.scale_to_zero(A1)  # parked: its container stopped and kept, holding nothing; a2 starts
        await settle(w)
        assert list(w.phases(A1).values()) == [Phase.PARKED]
        assert w.status(A2).state == State.RUNNING
        w.controller.wake(A1)  # its parked container is not started beyond the quota
        await settle(w)
        assert list(w.phases(A1).values()) == [Phase.PARKED] and w.launcher.unparked == []
        assert "quota of 1 replica is reached" in w.status(A1).message
    finally:
        await w.close()


async def test_a_roll_at_the_quota_recreates_within_it(world):
    w = world
    w.controller.apply(intent(A1, uid="a1", min_replicas=2, max_replicas=2))
    await settle(w)
    old = w.ready_ids(A1)
    w.change(A1, revision=2)  # no room for the surge replica: one old one goes first
    await settle(w, 6)
    now = w.ready_ids(A1)
    assert len(now) == 2 and not set(now) & set(old)
    assert w.status(A1).state == State.RUNNING


async def test_a_replica_found_running_after_a_restart_counts(world):
    w = world
    w.controller.apply(intent(A1, uid="a1", min_replicas=2, max_replicas=2))
    await settle(w)
    found = await w.runtime.list()
    await w.controller.close()

    again = World(runtime=w.runtime)
    again.launcher.cpus_per_replica, again.launcher.auto = 1, True
    again.controller.set_quota("acme", Quota(cpus=1))  # lowered while endpointd was down
    try:
        again.controller.apply(intent(A1, uid="a1", min_replicas=2, max_replicas=2))
        assert len(await again.controller.adopt(found)) == 2
        assert again.controller.quota_use("acme") == Use(cpus=2, replicas=2)
    finally:
        await again.close()


# --- whatever the order of events -----------------------------------------------------------------

KEYS = [A1, A2, B1]
which = st.integers(0, len(KEYS) - 1)
QUOTAS = {"acme": Quota(cpus=3, replicas=2), "beta": Quota(cpus=2)}


class QuotaMachine(RuleBasedStateMachine):
    """Two namespaces under quotas, their endpoints created, updated, scaled, put to zero, woken,
    paused and their starts failing in any order. After each step: no namespace holds more than
    its quota, and what the controller counts for it is exactly what its replicas hold."""

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = x1_world(park_ttl_s=60.0)
        self.world.launcher.auto = False  # starts end when a rule says
        for ns, quota in QUOTAS.items():
            self.world.controller.set_quota(ns, quota)
        self.generation = 1

    def teardown(self):
        self.loop.run_until_complete(self.world.close())
        self.loop.close()

    def settle(self):
        self.loop.run_until_complete(self.world.settle())
        self.world.now += 2

    @rule(k=which, low=st.integers(0, 2), high=st.integers(1, 3), cpus=st.sampled_from([1, 2]),
          roll=st.booleans())
    def create_or_update(self, k, low, high, cpus, roll):
        key, controller = KEYS[k], self.world.controller
        self.generation += 1
        self.world.launcher.cpus_per_replica = cpus  # every endpoint's instance changes together
        current = controller.intent(key)
        if current is None:
            controller.apply(intent(key, uid=f"u{k}", min_replicas=low, max_replicas=max(low, high)))
        else:
            controller.apply(replace(current, generation=self.generation, min_replicas=low,
                                     max_replicas=max(low, high), revision=current.revision + roll))
        self.settle()

    @rule(k=which, n=st.integers(1, 3))
    def recommend(self, k, n):
        self.world.controller.recommend(KEYS[k], n, "load")
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

    @rule(k=which, paused=st.booleans())
    def pause_or_resume(self, k, paused):
        if self.world.controller.intent(KEYS[k]) is not None:
            self.world.change(KEYS[k], paused=paused, resumed=not paused)
            self.settle()

    @precondition(lambda self: self.world.launcher.gates)
    @rule(data=st.data(), ok=st.booleans())
    def a_start_ends(self, data, ok):
        rid = data.draw(st.sampled_from(sorted(self.world.launcher.gates)))
        if ok:
            self.world.launcher.ready(rid)
        else:
            self.world.launcher.fail(rid, RuntimeError("the engine exited"))
        self.settle()

    def holders(self, ns: str) -> set[str]:
        """The namespace's replicas that hold resources, from their slots: every one but the parked."""
        return {slot.id for owner in self.world.controller._all() if owner.intent.key.namespace == ns
                for slot in owner.slots.values() if slot.phase is not Phase.PARKED}

    @invariant()
    def no_namespace_holds_more_than_its_quota(self):
        book = self.world.controller.quotas
        for ns, quota in QUOTAS.items():
            counted = {rid for rid, (owner, _) in book._held.items() if owner == ns}
            assert counted == self.holders(ns), (ns, counted, self.holders(ns))
            use = self.world.controller.quota_use(ns)
            assert quota.replicas is None or use.replicas <= quota.replicas, (ns, use)
            assert quota.cpus is None or use.cpus <= quota.cpus + EPSILON, (ns, use)


QuotaMachine.TestCase.settings = settings(max_examples=examples(60), stateful_step_count=15, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_no_namespace_passes_its_quota_whatever_the_order = QuotaMachine.TestCase
