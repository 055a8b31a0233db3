"""The two pure rules as tables: `wanted(intent, signals)` and `plan(view)`."""

from __future__ import annotations

import pytest

from autoscaler.control.planner import Cancel, Drain, Phase, Reclaim, SlotView, Start, View, plan
from autoscaler.model.intent import Signals, asleep, wanted
from tests.control_world import intent

S, R, D, X = Phase.STARTING, Phase.READY, Phase.DRAINING, Phase.STOPPING


@pytest.mark.parametrize(
    "intent_kw, signals, expected",
    [
        ({}, Signals(), 1),  # before the scaler speaks: the floor, max(min, 1)
        ({"min_replicas": 0}, Signals(), 1),  # min 0 still starts one
        ({"min_replicas": 2, "max_replicas": 3}, Signals(recommendation=1), 2),  # never under min
        ({"max_replicas": 2}, Signals(recommendation=5), 2),  # never over max
        ({"max_replicas": 4}, Signals(recommendation=3), 3),
        ({"paused": True}, Signals(recommendation=2), 0),
        ({"zeroed_at": 10.0}, Signals(recommendation=2), 0),  # a user's scale-to-zero...
        ({"zeroed_at": 10.0}, Signals(woken_at=9.0), 0),  # ...a wake before it does not count...
        ({"zeroed_at": 10.0}, Signals(woken_at=11.0), 1),  # ...one after it does
        ({"zeroed_at": 10.0, "min_replicas": 2}, Signals(), 0),  # whatever min says
        ({"min_replicas": 0}, Signals(idle_at=5.0), 0),  # idle at zero
        ({"min_replicas": 0}, Signals(idle_at=5.0, woken_at=6.0), 1),
        ({"min_replicas": 1}, Signals(idle_at=5.0), 1),  # min raised since: idle no longer holds
        ({"zeroed_at": 10.0, "min_replicas": 0}, Signals(idle_at=12.0, woken_at=11.0), 0),  # idle again after the wake
    ],
)
def test_wanted(intent_kw, signals, expected):
    i = intent(**intent_kw)
    assert wanted(i, signals) == expected
    assert asleep(i, signals) == (expected == 0 and not i.paused)


def view(wanted_n, *slots, max_replicas=2, revision=1, may_start=True, failed=False, free=None):
    return View(
        revision=revision, wanted=wanted_n, max_replicas=max_replicas,
        slots=tuple(SlotView(f"s{i}", rev, phase, load) for i, (rev, phase, load) in enumerate(slots)),
        may_start=may_start, failed=failed, free_capacity=free,
    )


@pytest.mark.parametrize(
    "v, expected",
    [
        (view(2), [Start(2)]),
        (view(2, (1, R, 0)), [Start(1)]),
        (view(1, (1, R, 0), (1, R, 3)), [Drain("s0")]),  # the least busy goes
        (view(1, (1, R, 0), (1, S, 0)), [Cancel("s1")]),  # a starting one before a ready one
        (view(0, (1, R, 0), (1, S, 0)), [Cancel("s1"), Drain("s0")]),
        # draining and stopping replicas count: max 2, one ready, one draining, one stopping -> no start
        (view(2, (1, R, 0), (1, X, 0), (2, D, 0), max_replicas=2), []),
        (view(2, (1, R, 0), (1, D, 0)), [Reclaim("s1")]),  # reclaimed before a new one starts
        (view(3, (1, R, 0), (1, D, 0), max_replicas=3), [Reclaim("s1"), Start(1)]),
        (view(1, may_start=False), []),  # backing off, or failed
        # A roll: a surge replica of the new revision, the old one kept until it is ready...
        (view(1, (1, R, 0), revision=2, max_replicas=1), [Start(1)]),
        (view(1, (1, R, 0), (2, S, 0), revision=2, max_replicas=1), []),
        # ...then drained.
        (view(1, (1, R, 0), (2, R, 0), revision=2, max_replicas=1), [Drain("s0")]),
        # At max, one new ready replica lets one old one go (the least busy), freeing the room...
        (view(2, (1, R, 5), (1, R, 0), (2, R, 0), revision=2), [Drain("s1")]),
        # ...for the next new one, while the other old one still serves.
        (view(2, (1, R, 5), (2, R, 0), revision=2), [Start(1)]),
        (view(2, (1, R, 5), (1, X, 0), (2, R, 0), revision=2), []),
        # A failed new revision: the old one keeps serving.
        (view(1, (1, R, 0), revision=2, may_start=False, failed=True), []),
        # Paused during a roll: everything goes.
        (view(0, (1, R, 0), (2, S, 0), revision=2, failed=True), [Cancel("s1"), Drain("s0")]),
        # No GPU for the surge: recreate, the old one first...
        (view(1, (1, R, 0), revision=2, max_replicas=1, free=0), [Drain("s0")]),
        # ...and only once: while it drains or stops nothing more goes.
        (view(1, (1, D, 0), revision=2, max_replicas=1, free=0), []),
        (view(1, (1, X, 0), revision=2, max_replicas=1, free=0), []),
        (view(1, revision=2, max_replicas=1, free=1), [Start(1)]),
        # Capacity bounds a plain scale-up.
        (view(3, (1, R, 0), max_replicas=3, free=1), [Start(1)]),
        (view(3, (1, R, 0), max_replicas=3, free=0), []),
    ],
)
def test_plan(v, expected):
    assert plan(v) == expected
