"""The scaling policy as tables: the arithmetic in the rows, time as data."""

import pytest

from autoscaler.model.spec import ScalingMetric
from autoscaler.scaling.policy import PolicyConfig, PolicyScaling, PolicyState, Snapshot, decide

CFG = PolicyConfig()  # the reference defaults: 20 s window, 300 s stabilization, 60 s minutes
PENDING_1_3 = PolicyScaling(min_replicas=1, max_replicas=3, threshold=1.5)


def one(pending, ready, current, scaling=PENDING_1_3, **snap):
    """A decision from a state that has seen a full window of this same load already."""
    state = PolicyState(started_at=-1000.0, last_arrivals=0, last_active_at=0.0)
    decision, _ = decide(Snapshot(pending, 0, ready, current, **snap), scaling, CFG, state, 0.0)
    return decision.replicas


@pytest.mark.parametrize(
    "pending, ready, current, expected",
    [
        (1, 1, 1, 1),  # 1 / 1 = 1.0 <= 1.5: steady
        (2, 1, 1, 2),  # 2 / 1 = 2.0 > 1.5: ceil(2 / 1.5) = 2
        (3, 1, 1, 2),  # ceil(3 / 1.5) = 2: 1.5 per replica is not over the threshold
        (4, 1, 1, 3),  # ceil(4 / 1.5) = 3
        (30, 1, 1, 3),  # ceil(30 / 1.5) = 20, capped at max 3
        (0, 2, 2, 1),  # idle, and no higher recommendation in the stabilization window
        (0, 0, 1, 1),  # min 1: never below
    ],
)
def test_pending_requests_table(pending, ready, current, expected):
    assert one(pending, ready, current) == expected


def test_capacity_caps_scale_up():
    assert one(30, 1, 1, capacity=2) == 2  # ceil(30 / 1.5) = 20 > max 3 > capacity 2


def run(rows, scaling=PENDING_1_3, config=CFG, start=0.0):
    """Rows of (t, pending, expected replicas); each row is one tick at time t with `ready`
    equal to the previous decision. Returns the decisions for a readable failure message."""
    state, current, seen = PolicyState(started_at=start), max(scaling.min_replicas, 1), []
    arrivals = 0
    for t, pending, expected in rows:
        arrivals += pending
        decision, state = decide(Snapshot(pending, arrivals, current, current), scaling, config, state, t)
        seen.append((t, pending, decision.replicas, decision.reason))
        assert decision.replicas == expected, seen
        current = decision.replicas
    return seen


def test_up_under_load_then_down_after_stabilization():
    run([
        # t (s), pending, expected replicas
        (0, 1, 1),  # average 1 <= 1.5
        (1, 4, 2),  # window average (1 + 4) / 2 = 2.5 -> ceil(2.5 / 1.5) = 2
        (2, 4, 2),  # (1 + 4 + 4) / 3 = 3.0 -> ceil(3 / 1.5) = 2
        (30, 4, 3),  # only t=30 is within 20 s: 4 -> ceil(4 / 1.5) = 3
        (40, 4, 3),  # steady load: no flapping
        (60, 0, 3),  # load gone: recommendation 1, but 3 was recommended at t=40, within 300 s
        (339, 0, 3),  # t=40 + 300 s = 340: still within the stabilization window
        (341, 0, 1),  # nothing above 1 within the last 300 s: down to 1
    ], start=-1000.0)


def test_no_scale_down_before_a_full_window_after_a_restart():
    # The process (and its history) starts at t=0 with 3 replicas running and no load.
    state = PolicyState()
    for t in (0, 100, 299):
        decision, state = decide(Snapshot(0, 0, 3, 3), PENDING_1_3, CFG, state, float(t))
        assert decision.replicas == 3, decision.reason
    decision, state = decide(Snapshot(0, 0, 3, 3), PENDING_1_3, CFG, state, 300.0)
    assert decision.replicas == 1


ZERO = PolicyScaling(min_replicas=0, max_replicas=2, threshold=1.5, idle_timeout_min=15)


def test_scale_to_zero_after_the_idle_timeout_and_an_open_stream_is_not_idle():
    config = PolicyConfig(minute_s=1.0)  # 15 "minutes" = 15 s
    state = PolicyState(started_at=-1000.0)
    snapshots = [
        (0.0, Snapshot(1, 1, 1, 1), 1),  # one long stream open
        (14.0, Snapshot(1, 1, 1, 1), 1),
        (29.0, Snapshot(1, 1, 1, 1), 1),  # 29 s in, but the stream is pending: not idle
        (30.0, Snapshot(0, 1, 1, 1), 1),  # stream done: idle since the last tick that saw it (29)
        (43.0, Snapshot(0, 1, 1, 1), 1),  # 14 s idle < 15
        (44.0, Snapshot(0, 1, 1, 1), 0),  # 15 s idle: to zero
        (50.0, Snapshot(0, 1, 0, 0), 0),  # stays at zero while idle
    ]
    for t, snapshot, expected in snapshots:
        decision, state = decide(snapshot, ZERO, config, state, t)
        assert decision.replicas == expected, (t, decision.reason)


def test_a_new_arrival_resets_the_idle_clock():
    config = PolicyConfig(minute_s=1.0)
    state = PolicyState(started_at=-1000.0)
    for t, arrivals, expected in [(0.0, 0, 1), (10.0, 1, 1), (24.0, 1, 1), (25.0, 1, 0)]:
        decision, state = decide(Snapshot(0, arrivals, 1, 1), ZERO, config, state, t)
        assert decision.replicas == expected, (t, decision.reason)


HW = PolicyScaling(min_replicas=1, max_replicas=4, metric=ScalingMetric.HARDWARE_USAGE, threshold=80.0)


@pytest.mark.parametrize(
    "initial, rows",
    [
        (1, [  # t, utilization %, expected replicas
            (0, 90, 2),  # 90 >= 80: +1 (first evaluation)
            (30, 95, 2),  # scale-up is evaluated every 60 s
            (60, 95, 3),  # the 1-minute average (90, 95, 95) is >= 80: +1
            (120, 95, 4),
            (180, 95, 4),  # max 4
        ]),
        (2, [
            (0, 30, 2),  # 30 < 80: ceil(2 * 30 / 80) = 1, but not before a full window of data
            (400, 30, 1),  # a full window seen, 2 minutes since the last evaluation: down to 1
        ]),
    ],
)
def test_hardware_usage(initial, rows):
    state, current = PolicyState(started_at=0.0), initial
    for t, util, expected in rows:
        decision, state = decide(Snapshot(0, 0, current, current, utilization=util), HW, CFG, state, float(t))
        assert decision.replicas == expected, (t, decision.reason, decision.inputs)
        current = decision.replicas


@pytest.mark.parametrize(
    "snapshot, state, now, kind",
    [
        (Snapshot(6, 0, 1, 1), PolicyState(started_at=-1000.0), 0.0, "up"),  # ceil(6 / 1.5) = 4 > 1
        (Snapshot(1, 0, 1, 1), PolicyState(started_at=-1000.0), 0.0, "steady"),  # 1 <= 1.5
        (Snapshot(0, 0, 3, 3), PolicyState(started_at=0.0), 10.0, "warmup"),  # 10 s < 300 s seen
        (Snapshot(0, 0, 3, 3), PolicyState(started_at=-1000.0, recommendations=((-10.0, 3),)), 0.0, "stabilizing"),
        (Snapshot(0, 0, 3, 3), PolicyState(started_at=-1000.0), 0.0, "down"),
        (Snapshot(30, 0, 1, 1, capacity=2), PolicyState(started_at=-1000.0), 0.0, "capacity"),
    ],
)
def test_every_decision_has_a_kind_for_metrics(snapshot, state, now, kind):
    decision, _ = decide(snapshot, PENDING_1_3, CFG, state, now)
    assert decision.kind == kind, decision.reason


ENGINE_1_3 = PolicyScaling(min_replicas=1, max_replicas=3, metric=ScalingMetric.ENGINE_QUEUE, threshold=2.0)


@pytest.mark.parametrize(
    "pending, engine_load, current, expected",
    [
        (0, 2.0, 1, 1),  # 2 running in the engine / threshold 2: steady
        (0, 5.0, 1, 3),  # ceil(5 / 2) = 3: the engine's queue counts, the proxy's pending does not
        (9, 1.0, 1, 1),  # the proxy holds 9, the engine runs 1: engineQueue follows the engine
        (5, None, 1, 3),  # no engine figures yet: the proxy's pending stands in, ceil(5 / 2) = 3
        (0, 40.0, 1, 3),  # capped at max 3
    ],
)
def test_engine_queue_table(pending, engine_load, current, expected):
    assert one(pending, current, current, ENGINE_1_3, engine_load=engine_load) == expected


def test_the_three_measures_decide_differently_on_the_same_load():
    """Streams that the proxy still counts (pending 4) while the engine runs only 2 and waits for
    none: pendingRequests adds replicas, engineQueue does not; hardwareUsage follows utilization."""
    load = dict(utilization=50.0, engine_load=2.0)
    assert one(4, 1, 1, PENDING_1_3, **load) == 3  # ceil(4 / 1.5)
    assert one(4, 1, 1, ENGINE_1_3, **load) == 1  # 2 / 2 = 1: enough
    assert one(4, 1, 1, PolicyScaling(1, 3, metric=ScalingMetric.HARDWARE_USAGE, threshold=80.0), **load) == 1  # 50 % < 80 %
