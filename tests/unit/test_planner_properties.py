"""Properties of the two pure rules, over random intents, signals and views: `wanted()` (the
replica count, autoscaler/model/intent.py) and `plan()` (the lifecycle actions,
autoscaler/control/planner.py), each checked against what its docstring promises."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.control.planner import SURGE, Cancel, Drain, Phase, Reclaim, SlotView, Start, Unpark, View, limit, plan
from autoscaler.model.intent import Intent, Signals, asleep, asleep_since, wanted
from engines.runtime import EndpointKey
from proxy.core.control import AuthType
from tests.examples import examples

EXAMPLES = settings(max_examples=examples(100), deadline=None)
TIMES = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)


@st.composite
def intents(draw) -> Intent:
    max_replicas = draw(st.integers(1, 8))
    return Intent(
        key=EndpointKey("alice", "e1"), uid="u1", generation=1, revision=1, auth=AuthType.PUBLIC,
        health_route="/health", min_replicas=draw(st.integers(0, max_replicas)), max_replicas=max_replicas,
        paused=draw(st.booleans()), zeroed_at=draw(TIMES),
    )


signals = st.builds(Signals, recommendation=st.none() | st.integers(0, 20), woken_at=TIMES, idle_at=TIMES)


@EXAMPLES
@given(intents(), signals)
def test_wanted_is_zero_when_paused_or_asleep_else_within_the_floor_and_max(intent, sig):
    n = wanted(intent, sig)
    if intent.paused or asleep(intent, sig):
        assert n == 0
    else:
        assert max(intent.min_replicas, 1) <= n <= intent.max_replicas
        if sig.recommendation is not None and max(intent.min_replicas, 1) <= sig.recommendation <= intent.max_replicas:
            assert n == sig.recommendation  # the scaler's word, when it is within the bounds
        if sig.recommendation is None:
            assert n == max(intent.min_replicas, 1)  # before the scaler speaks: the floor


@EXAMPLES
@given(intents(), signals, st.integers(0, 20))
def test_wanted_never_falls_when_the_recommendation_rises(intent, sig, more):
    base = sig.recommendation or 0
    assert wanted(intent, replace(sig, recommendation=base + more)) >= wanted(intent, replace(sig, recommendation=base))


@EXAMPLES
@given(intents(), signals, st.floats(min_value=1e-3, max_value=1e3))
def test_a_wake_after_the_endpoint_went_to_zero_wakes_it(intent, sig, later):
    since = asleep_since(intent, sig)
    if since is None:
        return
    woken = replace(sig, woken_at=since + later)
    assert not asleep(intent, woken)
    assert wanted(intent, woken) == (0 if intent.paused else wanted(replace(intent, zeroed_at=None), Signals(
        recommendation=sig.recommendation)))


@EXAMPLES
@given(intents(), signals)
def test_idle_holds_only_an_endpoint_whose_min_is_zero(intent, sig):
    if intent.zeroed_at is None and intent.min_replicas > 0 and not intent.paused:
        assert wanted(intent, sig) >= 1


# --- plan() ----------------------------------------------------------------------------------------


@st.composite
def views(draw, bounded_capacity: bool = True) -> View:
    max_replicas = draw(st.integers(1, 5))
    revision = draw(st.integers(1, 3))
    slots = draw(st.lists(st.tuples(st.integers(max(1, revision - 1), revision), st.sampled_from(Phase),
                                    st.integers(0, 5)), max_size=8))
    return View(
        revision=revision, wanted=draw(st.integers(0, max_replicas)), max_replicas=max_replicas,
        slots=tuple(SlotView(f"s{i}", rev, phase, load) for i, (rev, phase, load) in enumerate(slots)),
        may_start=draw(st.booleans()), failed=draw(st.booleans()),
        free_capacity=draw(st.none() | st.integers(0, 4)) if bounded_capacity else None,
    )


def apply(view: View, actions: list) -> View:
    """The view after the owner carried `actions` out (no launch finished, no container gone yet)."""
    phase = {s.id: s.phase for s in view.slots}
    new: list[SlotView] = []
    started = 0
    for action in actions:
        match action:
            case Start(count):
                started += count
                new += [SlotView(f"new{len(new) + i}", view.revision, Phase.STARTING) for i in range(count)]
            case Cancel(id):
                phase[id] = Phase.STOPPING
            case Drain(id):
                phase[id] = Phase.DRAINING
            case Reclaim(id):
                phase[id] = Phase.READY
            case Unpark(id):
                phase[id] = Phase.STARTING
                started += 1
    slots = tuple(replace(s, phase=phase[s.id]) for s in view.slots) + tuple(new)
    free = None if view.free_capacity is None else view.free_capacity - started
    return replace(view, slots=slots, free_capacity=free)


def ready(view: View) -> int:
    return sum(1 for s in view.slots if s.phase is Phase.READY)


@EXAMPLES
@given(views())
def test_each_action_fits_the_phase_of_its_replica_and_names_it_once(view):
    actions = plan(view)
    by_id = {s.id: s for s in view.slots}
    named = [a.id for a in actions if not isinstance(a, Start)]
    assert len(named) == len(set(named)) and set(named) <= set(by_id)
    for action in actions:
        if isinstance(action, Cancel):
            assert by_id[action.id].phase is Phase.STARTING
        elif isinstance(action, Drain):
            assert by_id[action.id].phase in (Phase.READY, Phase.SLEEPING)
        elif isinstance(action, Unpark):
            assert by_id[action.id].phase is Phase.PARKED and by_id[action.id].revision == view.revision
            assert view.may_start
        elif isinstance(action, Reclaim):
            assert by_id[action.id].phase is Phase.DRAINING and by_id[action.id].revision == view.revision
    starts = [a for a in actions if isinstance(a, Start)]
    assert len(starts) <= 1 and all(a.count > 0 for a in starts)
    assert not starts or view.may_start


@EXAMPLES
@given(views())
def test_a_start_never_passes_max_plus_surge_nor_what_is_wanted(view):
    actions = plan(view)
    after = apply(view, actions)
    if any(isinstance(a, Start | Unpark) for a in actions):
        # parked containers hold nothing (stopped): they count toward no limit
        assert sum(1 for s in after.slots if s.phase is not Phase.PARKED) <= limit(view) <= view.max_replicas + SURGE
        live_current = [s for s in after.slots
                        if s.revision == view.revision and s.phase in (Phase.STARTING, Phase.READY, Phase.SLEEPING)]
        assert len(live_current) <= view.wanted
        if view.free_capacity is not None:
            assert after.free_capacity >= 0
        # a draining replica of the current revision is reclaimed before a new one is started
        assert not any(s.phase is Phase.DRAINING and s.revision == view.revision for s in after.slots)
    if any(isinstance(a, Start) for a in actions):
        # and a parked one is started again before a new container is made
        assert not any(s.phase is Phase.PARKED and s.revision == view.revision for s in after.slots)


@EXAMPLES
@given(views())
def test_no_more_replicas_stop_serving_than_the_surplus_or_one_for_a_recreate(view):
    after = apply(view, plan(view))
    keep = min(view.wanted, ready(view))
    # With unbounded capacity a roll keeps the old serving until new ones are ready: never under
    # min(wanted, serving now). A recreate (no room for the surge) may let exactly one go first.
    assert ready(after) >= keep - (0 if view.free_capacity is None else 1)


@EXAMPLES
@given(views(bounded_capacity=False))
def test_the_last_ready_replica_stays_while_its_replacement_is_not_ready(view):
    if view.wanted >= 1 and ready(view) >= 1:
        assert ready(apply(view, plan(view))) >= 1


@EXAMPLES
@given(views(bounded_capacity=False))
def test_a_plan_carried_out_asks_for_no_second_start_and_the_plans_settle(view):
    after = apply(view, plan(view))
    assert not any(isinstance(a, Start | Reclaim | Unpark) for a in plan(after))  # what was missing was asked for at once
    # A reclaim is not yet counted as ready when the old revision's share is decided, so one more
    # round may let an old replica go; then nothing is left to do (while no launch finishes).
    assert plan(apply(after, plan(after))) == []


@EXAMPLES
@given(st.integers(1, 5), st.integers(1, 3), st.lists(st.integers(0, 5), max_size=5), st.booleans())
def test_a_view_that_matches_what_is_wanted_plans_nothing(max_replicas, revision, loads, may_start):
    n = min(len(loads), max_replicas)
    slots = tuple(SlotView(f"s{i}", revision, Phase.READY, load) for i, load in enumerate(loads[:n]))
    assert plan(View(revision, n, max_replicas, slots, may_start=may_start)) == []


@EXAMPLES
@given(views(), st.randoms(use_true_random=False))
def test_the_order_of_the_slots_does_not_change_the_plan(view, rng: random.Random):
    shuffled = list(view.slots)
    rng.shuffle(shuffled)
    assert plan(replace(view, slots=tuple(shuffled))) == plan(view)
