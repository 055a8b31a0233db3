"""Usage and cost arithmetic (autoscaler/model/usage.py), in tables: units and cost by instance
size and rate, counter deltas across restarts, the interval grid, a query's buckets and its answer;
and a property of the counter deltas over any sequence of engine restarts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.model.usage import (
    MAX_BUCKETS,
    Buckets,
    CounterDeltas,
    Hardware,
    Rates,
    ReplicaRow,
    TrafficRow,
    UsageQueryError,
    plan_buckets,
    report,
    spread,
)
from tests.examples import examples

CPU = Hardware("cpu", "intel-icl", "x1")
CPU4 = Hardware("cpu", "intel-icl", "x4")
L4 = Hardware("gpu", "nvidia-l4", "x1")
L4X2 = Hardware("gpu", "nvidia-l4", "x2")
T4 = Hardware("gpu", "nvidia-t4", "x1")
RATES = Rates({"intel-icl": 0.12, "nvidia-l4": 0.8, "nvidia-a100": 0.0})


@pytest.mark.parametrize("size, units", [("x1", 1), ("x2", 2), ("x8", 8), ("x16", 16), ("", 1), ("4", 1), ("x0", 1)])
def test_a_replica_of_size_xn_is_n_units(size, units):
    assert Hardware("gpu", "nvidia-l4", size).units == units


@pytest.mark.parametrize("hardware, seconds, cost", [
    (CPU, 3600, 0.12),  # an hour of one unit
    (CPU, 1800, 0.06),
    (CPU4, 3600, 0.48),  # 4 units
    (L4, 90, 0.02),  # 90 s at 0.8/h
    (L4X2, 3600, 1.6),
    (T4, 3600, 0.0),  # unpriced: costs nothing
    (Hardware("gpu", "nvidia-a100", "x1"), 3600, 0.0),  # priced at zero
    (CPU, 0, 0.0),
])
def test_cost_is_hours_times_rate_times_units(hardware, seconds, cost):
    assert RATES.cost(hardware, seconds) == pytest.approx(cost)


def test_an_unpriced_type_has_no_rate_and_a_zero_rate_is_a_rate():
    assert RATES.rate("nvidia-t4") is None
    assert RATES.rate("nvidia-a100") == 0.0


@pytest.mark.parametrize("readings, deltas", [
    ([5, 8, 8, 20], [5, 3, 0, 12]),  # a new replica counts from zero
    ([10, 4, 9], [10, 4, 5]),  # a restart: the reading below the last is all new
    ([10, 0, 0, 3], [10, 0, 0, 3]),  # restarted to zero, then counting again
    ([7, math.nan, -1, 9], [7, 0, 0, 2]),  # a reading that is not a count changes nothing
    ([], []),
])
def test_counter_deltas_are_never_negative_and_survive_restarts(readings, deltas):
    counter = CounterDeltas()
    assert [counter.delta("r1", v) for v in readings] == deltas


def test_kept_baselines_count_what_came_while_endpointd_was_down_once():
    before = CounterDeltas()
    assert before.delta("r1", 100) == 100
    after = CounterDeltas(before.baselines())  # endpointd restarted; the engine went on to 130
    assert after.delta("r1", 130) == 30
    assert after.delta("r2", 7) == 7  # a replica it never saw counts from zero


def test_a_reset_replica_counts_from_zero_and_a_forgotten_one_is_gone():
    counter = CounterDeltas({"r1": 100, "r2": 50})
    counter.reset("r1")  # parked: its container stopped; a start begins its counters at 0
    assert counter.delta("r1", 120) == 120  # not caught by "below the last": the reset said so
    counter.forget("r2")
    assert counter.baselines() == {"r1": 120}


# Segments of a counter between engine restarts: each a list of non-negative increments.
SEGMENTS = st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=6), min_size=1, max_size=6)


@settings(max_examples=examples(200), deadline=None)
@given(SEGMENTS, st.data())
def test_the_deltas_add_up_to_what_the_engine_counted_when_each_restart_is_seen(segments, data):
    """Whatever the increments, restarts and readings taken: when each restart is either seen
    (`reset`: the container stopped) or shows as a reading below the last, the deltas sum to the
    total the engine counted — nothing twice, nothing lost, nothing negative."""
    counter = CounterDeltas()
    total = counted = 0
    for i, increments in enumerate(segments):
        if i:
            counter.reset("r")  # the engine restarted
        value = 0
        for step in increments:
            value += step
            total += step
            delta = counter.delta("r", value)
            assert delta >= 0
            counted += delta
    assert counted == total


@pytest.mark.parametrize("start, end, interval, cut", [
    (0, 60, 60, [(0, 60)]),
    (30, 150, 60, [(0, 30), (60, 60), (120, 30)]),  # across two boundaries
    (125, 130, 60, [(120, 5)]),
    (120, 120, 60, []),
    (130, 120, 60, []),  # end before start: nothing
    (0.5, 2.25, 1, [(0, 0.5), (1, 1), (2, 0.25)]),
])
def test_a_span_is_cut_at_the_interval_grid(start, end, interval, cut):
    got = spread(start, end, interval)
    assert [a for a, _ in got] == [a for a, _ in cut]
    assert [s for _, s in got] == pytest.approx([s for _, s in cut])


@pytest.mark.parametrize("start, end, step, expected", [
    (None, None, None, Buckets(1_000_000 - 86_400, 1_000_000, 86_400, 1)),  # the last day, as one bucket
    (0, 3600, None, Buckets(0, 3600, 3600, 1)),
    (0, 3600, 60, Buckets(0, 3600, 60, 60)),
    (0, 3601, 60, Buckets(0, 3601, 60, 61)),  # the last bucket is short
    (0, 60_000, 60, Buckets(0, 60_000, 60, MAX_BUCKETS)),  # exactly at the bound
    (None, 500_000, 3600, Buckets(500_000 - 86_400, 500_000, 3600, 24)),
])
def test_a_querys_buckets(start, end, step, expected):
    assert plan_buckets(start, end, step, now=1_000_000) == expected


@pytest.mark.parametrize("start, end, step, message", [
    (10, 10, None, "must be later than"),
    (20, 10, None, "must be later than"),
    (0, 60_060, 60, "more than 1000: use a step of at least 61 s"),
    (0, 3600, 0.5, "`step` must be between 1 and"),
    (0, 3600, 1e12, "`step` must be between 1 and"),
    (0, 1e12, None, "at most"),
])
def test_a_query_out_of_bounds_is_refused_saying_why(start, end, step, message):
    with pytest.raises(UsageQueryError, match=message) as raised:
        plan_buckets(start, end, step, now=1_000_000)
    assert raised.value.status == 400


@pytest.mark.parametrize("t, index", [(0, 0), (59.9, 0), (60, 1), (3599, 59), (3600, None), (-1, None)])
def test_each_time_falls_in_one_bucket(t, index):
    assert Buckets(0, 3600, 60, 60).index(t) == index


def test_the_answer_sums_per_bucket_endpoint_and_namespace_and_names_unpriced_types():
    buckets = Buckets(0, 7200, 3600, 2)
    replicas = [
        ReplicaRow("acme", "chat", 0, L4, 1800), ReplicaRow("acme", "chat", 0, L4, 1800),  # two rows, one bucket
        ReplicaRow("acme", "chat", 1, T4, 3600),  # moved to an unpriced GPU
        ReplicaRow("acme", "embed", 1, CPU4, 900),
    ]
    traffic = [
        TrafficRow("acme", "chat", 0, 10, 1000, 5000, 120, 300),
        TrafficRow("acme", "chat", 1, 5, 10, 20, None, None),  # its engine counted nothing there
        TrafficRow("acme", "embed", 1, 2, 64, 128, None, None),  # an engine without token counts
    ]
    answer = report("acme", buckets, replicas, traffic, RATES)
    chat, embed = answer["endpoints"]
    assert (chat["name"], embed["name"]) == ("chat", "embed")
    assert [b["from"] for b in chat["buckets"]] == ["1970-01-01T00:00:00.000Z", "1970-01-01T01:00:00.000Z"]
    first = chat["buckets"][0]
    assert first["replicaSeconds"] == 3600 and first["cost"] == pytest.approx(0.8)
    assert first["replicas"] == [{"accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x1",
                                  "replicaSeconds": 3600, "ratePerHour": 0.8, "cost": 0.8}]
    assert (first["requests"], first["bytesIn"], first["bytesOut"], first["tokensIn"], first["tokensOut"]) == \
        (10, 1000, 5000, 120, 300)
    assert chat["buckets"][1]["cost"] == 0 and chat["buckets"][1]["replicas"][0]["ratePerHour"] is None
    assert chat["buckets"][1]["tokensIn"] is None
    assert chat["total"]["replicaSeconds"] == 7200 and chat["total"]["tokensIn"] == 120  # None adds nothing
    assert chat["total"]["requests"] == 15 and chat["total"]["cost"] == pytest.approx(0.8)
    assert [b["from"] for b in embed["buckets"]] == ["1970-01-01T01:00:00.000Z"]  # buckets without usage left out
    assert embed["total"]["cost"] == pytest.approx(900 / 3600 * 0.12 * 4)
    assert embed["total"]["tokensOut"] is None
    total = answer["total"]
    assert total["replicaSeconds"] == 8100 and total["requests"] == 17 and total["bytesOut"] == 5148
    assert total["cost"] == pytest.approx(0.8 + 0.12)
    assert answer["unpriced"] == ["nvidia-t4"]
    assert (answer["namespace"], answer["buckets"], answer["step"]) == ("acme", 2, 3600)


def test_an_answer_without_usage_is_zero_not_missing():
    answer = report("acme", Buckets(0, 60, 60, 1), [], [], RATES)
    assert answer["endpoints"] == [] and answer["unpriced"] == []
    assert answer["total"] == {"replicaSeconds": 0, "replicas": [], "requests": 0, "bytesIn": 0, "bytesOut": 0,
                               "tokensIn": None, "tokensOut": None, "cost": 0}
