"""Usage in the store: intervals written and read back summed per endpoint and bucket, an
interval written twice (a clean stop, then a restart in the same interval) adding up, tokens that
stay unknown until an engine counts them, what the meter keeps of each replica, and retention."""

from __future__ import annotations

import pytest

from autoscaler.model.usage import (
    Buckets,
    Hardware,
    IntervalReplicas,
    IntervalTraffic,
    Metered,
    ReplicaRow,
    TrafficRow,
)
from autoscaler.store.store import Store

CPU = Hardware("cpu", "intel-icl", "x1")
L4 = Hardware("gpu", "nvidia-l4", "x2")


@pytest.fixture
async def store(tmp_path):
    opened = await Store.open(tmp_path / "endpointd.db")
    yield opened
    await opened.close()


def seconds(ns, name, start, s, hw=CPU):
    return IntervalReplicas(ns, name, start, hw, s)


def served(ns, name, start, requests, tokens=(None, None)):
    return IntervalTraffic(ns, name, start, requests, requests * 10, requests * 100, *tokens)


async def test_intervals_are_summed_per_endpoint_bucket_and_hardware(store):
    await store.write_usage(
        [seconds("acme", "chat", 0, 60), seconds("acme", "chat", 60, 60), seconds("acme", "chat", 60, 30, L4),
         seconds("acme", "chat", 120, 60), seconds("acme", "embed", 0, 15), seconds("bob", "mine", 0, 60)],
        [served("acme", "chat", 0, 2, (100, 40)), served("acme", "chat", 60, 3, (50, 10)), served("acme", "embed", 60, 1)],
        [],
    )
    replicas, traffic = await store.usage("acme", Buckets(0, 180, 120, 2))
    assert sorted(replicas, key=lambda r: (r.endpoint, r.bucket, r.hardware)) == [
        ReplicaRow("acme", "chat", 0, CPU, 120), ReplicaRow("acme", "chat", 0, L4, 30),
        ReplicaRow("acme", "chat", 1, CPU, 60), ReplicaRow("acme", "embed", 0, CPU, 15),
    ]
    assert sorted(traffic, key=lambda t: t.endpoint) == [
        TrafficRow("acme", "chat", 0, 5, 50, 500, 150, 50),
        TrafficRow("acme", "embed", 0, 1, 10, 100, None, None),  # no engine count: unknown, not zero
    ]
    everyone, _ = await store.usage(None, Buckets(0, 60, 60, 1))
    assert {(r.namespace, r.endpoint) for r in everyone} == {("acme", "chat"), ("acme", "embed"), ("bob", "mine")}


@pytest.mark.parametrize("buckets, chat_seconds", [
    (Buckets(60, 120, 60, 1), 60),  # from 60: the interval at 0 is left out
    (Buckets(0, 120, 60, 2), 120),  # to 120: the interval at 120 is left out
    (Buckets(30, 90, 60, 1), 60),  # an interval counts where its start falls: 60 is in, 0 is not
    (Buckets(0, 130, 60, 3), 180),  # the short last bucket takes the interval at 120
])
async def test_an_interval_counts_in_the_range_its_start_falls_in(store, buckets, chat_seconds):
    await store.write_usage([seconds("acme", "chat", t, 60) for t in (0, 60, 120)], [], [])
    replicas, _ = await store.usage("acme", buckets)
    assert sum(r.seconds for r in replicas) == chat_seconds
    assert all(0 <= r.bucket < buckets.count for r in replicas)


async def test_an_interval_written_twice_adds_up(store):
    """A clean stop writes the part of its interval that has passed; a start within the same
    interval writes the rest of it on top."""
    await store.write_usage([seconds("acme", "chat", 0, 20)], [served("acme", "chat", 0, 1)], [])
    await store.write_usage([seconds("acme", "chat", 0, 25)], [served("acme", "chat", 0, 2, (30, 3))], [])
    await store.write_usage([], [served("acme", "chat", 0, 1, (5, None))], [])
    replicas, traffic = await store.usage("acme", Buckets(0, 60, 60, 1))
    assert replicas == [ReplicaRow("acme", "chat", 0, CPU, 45)]
    assert traffic == [TrafficRow("acme", "chat", 0, 4, 40, 400, 35, 3)]


async def test_the_meter_keeps_each_replica_until_told_to_forget_it(store, tmp_path):
    first = Metered("r1", "acme", "chat", L4, 120.0, 500.0, 80.0)
    parked = Metered("r2", "acme", "chat", CPU, None, None, None)
    await store.write_usage([], [], [first, parked])
    await store.write_usage([], [], [Metered("r1", "acme", "chat", L4, 180.0, 640.0, 90.0)], forget=["r2"])
    again = await Store.open(tmp_path / "endpointd.db")  # what a restart reads
    try:
        assert await again.metered() == [Metered("r1", "acme", "chat", L4, 180.0, 640.0, 90.0)]
    finally:
        await again.close()


async def test_rows_older_than_the_retention_go(store):
    await store.write_usage([seconds("acme", "chat", t, 60) for t in (0, 60, 120)],
                            [served("acme", "chat", t, 1) for t in (0, 60, 120)], [])
    await store.write_usage([], [], [], before=120)
    replicas, traffic = await store.usage("acme", Buckets(0, 180, 60, 3))
    assert [(r.bucket, r.seconds) for r in replicas] == [(2, 60)]
    assert [t.bucket for t in traffic] == [2]
