"""Analytics: the latency sketch, the ring and the re-bucketing (tables), query planning, the
sampler against fakes with injected clocks (proxy tap, pending counts, controller, docker stats,
NVML), the OpenMetrics figures, the SQLite history (persisted, merged across restarts, pruned,
forgotten) and the collector for the main /metrics."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
import stat
from dataclasses import dataclass, field, fields

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from autoscaler.api import metrics as api_metrics
from autoscaler.api.base import API, errors_middleware
from autoscaler.api.endpoints import ManagementApi
from autoscaler.config import ScalingConfig, ServeConfig
from autoscaler.model import settings
from autoscaler.model.intent import Intent
from autoscaler.observe.analytics import (
    MAX_POINTS,
    Analytics,
    AnalyticsConfig,
    QueryError,
    UsagePoller,
    plan_query,
)
from autoscaler.observe.analytics_series import (
    GAMMA,
    RELATIVE_ACCURACY,
    Aggregate,
    Ring,
    Sample,
    Sketch,
    rebucket,
    render,
    status_class,
)
from autoscaler.observe.analytics_store import History
from autoscaler.observe.engine_metrics import EngineSignals, Scraped
from engines.gpus import GpuAllocator, GpuSampler, read_inventory
from engines.runtime import EndpointKey, RuntimeFailure, Usage
from proxy.core import metrics as proxy_metrics
from proxy.core.config import ProxyConfig
from proxy.core.control import AuthType, Identity, InMemoryControlPlane, Replica, RouteEntry
from proxy.core.metrics import ProxyMetrics
from proxy.core.pending import PendingCounter
from proxy.core.pipeline import Pipeline
from proxy.management.app import PIPELINE
from tests.unit.test_gpus import HOST, FakeNVML, _Memory

KEY = EndpointKey("alice", "llm")
NAME = str(KEY)
STEP = 300  # the history's default resolution
T0 = 1_700_000_100.0  # 2023-11-14T22:15:00Z, the start of a 5-minute history step


def intent(key=KEY, uid="u1", max_replicas=3) -> Intent:
    return Intent(key=key, uid=uid, generation=1, revision=1, auth=AuthType.PRIVATE, health_route="/health",
                  min_replicas=0, max_replicas=max_replicas)


# --- the sketch -------------------------------------------------------------------------------


def nearest(values, q):
    """The latency DDSketch's rank rule aims at: index floor(q·(n-1)) of the sorted values."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


@pytest.mark.parametrize("seed, n", [(1, 1), (2, 10), (3, 1000), (4, 20_000)])
def test_sketch_quantiles_are_within_two_percent_of_an_observed_latency(seed, n):
    rng = random.Random(seed)
    latencies = [rng.lognormvariate(-2, 1.5) for _ in range(n)]  # 1 ms .. tens of seconds
    sketch = Sketch()
    for latency in latencies:
        sketch.add(latency)
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = nearest(latencies, q)
        assert abs(sketch.quantile(q) - exact) <= RELATIVE_ACCURACY * exact * 1.0001, q


def test_merged_sketches_are_the_sketch_of_all_the_latencies():
    rng = random.Random(7)
    parts = [[rng.expovariate(5) for _ in range(300)] for _ in range(4)]
    whole, merged = Sketch(), Sketch()
    for part in parts:
        piece = Sketch()
        for latency in part:
            whole.add(latency)
            piece.add(latency)
        merged.merge_packed(piece.pack())
    assert merged.bins == whole.bins and merged.count == whole.count == 1200
    assert Sketch.from_json(whole.to_json()).bins == whole.bins


def test_an_empty_sketch_has_no_quantiles():
    assert Sketch().quantile(0.5) is None
    assert GAMMA == pytest.approx(1.02 / 0.98)


@pytest.mark.parametrize("code, cls", [("200", 0), ("204", 0), ("401", 1), ("499", 1), ("503", 2), ("302", None), ("101", None)])
def test_status_classes(code, cls):
    assert status_class(code) == cls


# --- the ring and the re-bucketing --------------------------------------------------------------


def sample(t, total=0, pending=None, replicas=None, latencies=()):
    sketch = Sketch()
    for latency in latencies:
        sketch.add(latency)
    return Sample(t, (total, total, 0, 0), sketch, {"pending_requests": pending}, replicas)


def test_the_ring_keeps_the_last_turn_and_finds_ranges():
    ring = Ring(10.0, 3)
    for t in (0, 10, 20, 30):
        ring.put(sample(t, total=int(t)))
    assert [s.t for s in ring.between(0, 100)] == [10, 20, 30]  # 0 was overwritten a full turn later
    assert [s.t for s in ring.between(15, 30)] == [20]
    assert list(Ring(10.0, 3).between(0, 100)) == []


def test_two_rounds_in_one_bucket_add_their_counts_and_keep_the_newer_gauges():
    ring = Ring(10.0, 8)
    ring.put(sample(40, total=2, pending=5, latencies=[0.1]))
    ring.put(sample(41, total=3, pending=7, latencies=[0.2]))  # a late round, same bucket
    [merged] = ring.between(0, 100)
    assert merged.counts[0] == 5 and merged.gauge("pending_requests") == 7
    agg = Aggregate()
    agg.add(merged)
    assert agg.sketch.count == 2


@pytest.mark.parametrize("points, start, step, count, totals, pending", [
    # (t, requests, pending): counts add up, gauges are means of the samples that had a value
    ([(0, 1, 2.0), (10, 2, 4.0), (20, 3, None)], 0, 30, 1, [6], [3.0]),
    ([(0, 1, 1), (10, 2, 2), (20, 3, 3), (30, 4, 4)], 0, 20, 2, [3, 7], [1.5, 3.5]),
    # steps nobody sampled are null, not zero
    ([(0, 1, 1), (30, 4, 4)], 0, 10, 4, [1, None, None, 4], [1, None, None, 4]),
    ([(0, 5, 1)], -10, 10, 2, [None, 5], [None, 1]),
    # points outside the range are left out
    ([(0, 1, 1), (100, 9, 9)], 0, 50, 1, [1], [1]),
])
def test_rebucketing(points, start, step, count, totals, pending):
    steps = rebucket(((t, sample(t, n, p)) for t, n, p in points), start, step, count)
    body = render(start, start + step * count, step, 10, steps)
    assert body["series"]["requests"]["total"] == totals
    assert body["series"]["pending_requests"] == pending
    assert body["timestamps"] == [start + k * step for k in range(count)]


def test_rebucketing_aggregates_equals_rebucketing_their_samples():
    samples = [sample(t, total=t // 10, pending=t, replicas={"r1": {"cpu_usage_percent": t}}, latencies=[t / 1000 + 0.01])
               for t in range(0, 600, 10)]
    direct = rebucket(((s.t, s) for s in samples), 0, 600, 1)[0]
    rolled = [Aggregate(), Aggregate()]
    for s in samples:
        rolled[s.t >= 300].add(s)
    via = rebucket([(0, rolled[0]), (300, Aggregate.from_json(rolled[1].to_json()))], 0, 600, 1)[0]
    assert via.to_json() == direct.to_json()
    assert via.replica_gauge("r1", "cpu_usage_percent") == pytest.approx(295.0)


def test_render_shares_and_latencies():
    s = Sample(0, (10, 6, 3, 1), None, {})
    empty = Sample(10, (0, 0, 0, 0), None, {})
    body = render(0, 20, 10, 10, rebucket([(0, s), (10, empty)], 0, 10, 2))
    assert body["series"]["requests_share"] == {"2xx": [0.6, None], "4xx": [0.3, None], "5xx": [0.1, None]}
    assert body["series"]["latency_seconds"]["p99"] == [None, None]


# --- planning a query -------------------------------------------------------------------------


NOW = 1_800_000_000.0


def plan(start=None, end=None, step=None, fine_since=NOW - 86_400):
    return plan_query(start, end, step, now=NOW, fine_since=fine_since, fine_s=10.0, coarse_s=300,
                      max_range_s=31 * 86_400)


@pytest.mark.parametrize("args, expected", [
    # (start, end, step) -> (start, step, count, fine)
    ((None, None, None), (NOW - 3600, 10.0, 360, True)),  # the last hour at the ring's resolution
    ((NOW - 3600, NOW, 60), (NOW - 3600, 60.0, 60, True)),
    ((NOW - 3605, NOW, 15), (NOW - 3610, 20.0, 181, True)),  # start aligned down, step rounded up to 10 s
    ((NOW - 7 * 86_400, NOW, 3600), (NOW - 7 * 86_400, 3600.0, 168, False)),  # older than the ring: history
    ((NOW - 2 * 86_400, NOW, 100), (NOW - 2 * 86_400, 300.0, 576, False)),  # step rounded up to 5 min
    ((NOW - 100_000, NOW, None), (NOW - 100_200, 300.0, 334, False)),
])
def test_queries_pick_the_resolution_that_covers_them(args, expected):
    p = plan(*args)
    assert (p.start, p.step, p.count, p.fine) == expected


def test_after_a_restart_the_ring_covers_only_what_it_saw():
    assert plan(NOW - 3600, NOW, 60, fine_since=NOW - 600).fine is False


@pytest.mark.parametrize("args, message", [
    ((NOW, NOW - 10, None), "`to` .* must be later than `from`"),
    ((NOW - 40 * 86_400, NOW, 3600), "at most .* s of history is kept"),
    ((NOW - 3600, NOW, 0), "`step` must be more than 0"),
])
def test_impossible_queries_say_what_to_change(args, message):
    with pytest.raises(QueryError, match=message):
        plan(*args)


def test_a_step_too_fine_for_the_range_names_the_least_step():
    # Not reachable at the default 10 s (a day is 8,640 points); with a 1 s interval it is.
    with pytest.raises(QueryError, match=f"gives 86000 points over this range, more than {MAX_POINTS}: use a step of at least 8 s"):
        plan_query(NOW - 86_000, NOW, 1, now=NOW, fine_since=0, fine_s=1.0, coarse_s=300, max_range_s=31 * 86_400)


# --- config -------------------------------------------------------------------------------------


def test_config_defaults_are_the_reference_cadences():
    c = AnalyticsConfig()
    assert (c.analytics_interval_s, c.analytics_memory_s, c.analytics_history_step_s, c.analytics_history_days) == (10.0, 86_400.0, 300, 30.0)
    assert (c.engine_scrape_interval_s, c.engine_scrape_timeout_s, c.analytics_window_s) == (5.0, 2.0, 300.0)
    assert c.ring_slots == 8640


def test_config_loads_from_env_and_refuses_what_it_cannot_do():
    c = settings.load(AnalyticsConfig, "analytics", env={"ENDPOINTD_ANALYTICS_INTERVAL_S": "0.5"})
    assert c.analytics_interval_s == 0.5 and c.ring_slots == 172_800
    with pytest.raises(settings.SettingsError, match="analytics.analytics_interval_s = '0' .* between 0.1 and 300"):
        settings.load(AnalyticsConfig, "analytics", env={"ENDPOINTD_ANALYTICS_INTERVAL_S": "0"})
    with pytest.raises(settings.SettingsError, match="buckets per endpoint"):
        AnalyticsConfig(analytics_interval_s=0.1, analytics_memory_s=7 * 86_400)
    with pytest.raises(settings.SettingsError, match="finer than"):
        AnalyticsConfig(analytics_interval_s=120, analytics_history_step_s=60)


def test_config_keys_share_no_environment_variable_or_flag_with_other_sections():
    ours = {f.name for f in fields(AnalyticsConfig)}
    theirs = {f.name for cls in (ProxyConfig, ServeConfig, ScalingConfig) for f in fields(cls)}
    assert not ours & theirs


# --- fakes for the sampler ---------------------------------------------------------------------


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class FakeEndpoints:
    intents: dict = field(default_factory=dict)
    ready: dict = field(default_factory=dict)

    def keys(self):
        return list(self.intents)

    def intent(self, key):
        return self.intents.get(key)

    def ready_ids(self, key):
        return list(self.ready.get(key, ()))


class FakeUsage:
    def __init__(self) -> None:
        self.usages: dict[str, Usage | Exception] = {}
        self.stalled = asyncio.Event()

    async def usage(self, replica_id):
        found = self.usages.get(replica_id)
        if found is None:
            await self.stalled.wait()  # a Docker engine that does not answer
        if isinstance(found, Exception):
            raise found
        return found


class World:
    """An Analytics over fakes: one endpoint alice/llm with replicas r1 and r2."""

    def __init__(self, tmp_path=None, *, gpus=None, gpu_sampler=None, **config) -> None:
        self.wall = Clock(T0 + 5)  # mid-bucket, as run() ticks
        self.mono = Clock(100.0)
        self.counter = PendingCounter()
        self.metrics = ProxyMetrics(self.counter, dict)
        self.endpoints = FakeEndpoints({KEY: intent()}, {KEY: ["r1", "r2"]})
        self.runtime = FakeUsage()
        self.routes = InMemoryControlPlane()
        self.routes.put(RouteEntry("alice", "llm", AuthType.PRIVATE, replicas=(
            Replica("r1", "127.0.0.1:1", api_key="k1"), Replica("r2", "127.0.0.1:2", api_key="k2"))))
        self.analytics = Analytics(
            AnalyticsConfig(**config), endpoints=self.endpoints, runtime=self.runtime, answers=self.metrics,
            pending=self.counter.snapshot, routes=self.routes, gpus=gpus, gpu_sampler=gpu_sampler,
            cpu_limit=lambda intent: 2.0, data_dir=tmp_path, wall=self.wall, clock=self.mono,
        )

    def answer(self, replica, code, duration, times=1, endpoint=NAME, demand=True):
        for _ in range(times):
            self.metrics.answered(endpoint, replica, code, duration, demand=demand)

    async def round(self, seconds=10.0):
        """One sampler round, then the clocks move on to the next bucket's middle."""
        samples = await self.analytics.tick()
        self.wall.t += seconds
        self.mono.t += seconds
        return samples


@pytest.fixture
async def world():
    w = World()
    yield w
    w.runtime.stalled.set()
    await w.analytics.close()


async def test_a_round_records_requests_latencies_pending_replicas_and_usage(world):
    world.answer("r1", "200", 0.1, times=3)
    world.answer("r2", "503", 0.5)
    world.answer("", "401", None)  # refused before admission: counted, no latency
    world.answer("r1", "302", 0.01)  # in the total only
    world.answer("r1", "200", 0.2, demand=False)  # the control plane's probe: not a caller's request
    world.answer("", "404", None, endpoint="bob/unknown")  # no such endpoint: nobody's series
    tickets = [world.counter.track(NAME).__enter__() for _ in range(2)]
    world.runtime.usages = {"r1": Usage(150.0, 1_000_000_000, None), "r2": Usage(50.0, 3_000_000_000, None)}
    await world.analytics.usage.poll()
    world.analytics.engines._latest = {"r1": Scraped(KEY, EngineSignals(queue=3.0, running=2.0, kv_cache=0.5), world.mono.t)}
    sample = (await world.round())["u1"]
    assert sample.counts == (6, 3, 1, 1)
    assert {name: sample.gauge(name) for name in ("pending_requests", "running_replicas", "max_replicas",
                                                  "cpu_usage_percent", "memory_usage_bytes", "engine_queue",
                                                  "engine_kv_cache_usage", "gpu_usage_percent")} == {
        "pending_requests": 2, "running_replicas": 2, "max_replicas": 3,
        "cpu_usage_percent": 50.0,  # 75 % and 25 % of a 2-CPU limit
        "memory_usage_bytes": 2e9, "engine_queue": 3.0, "engine_kv_cache_usage": 0.5, "gpu_usage_percent": None,
    }
    assert sample.replica_gauge("r1", "cpu_usage_percent") == 75.0
    assert sample.replica_gauge("r2", "engine_queue") is None
    for ticket in tickets:
        ticket.close()
    # The next round counts only what came since.
    world.answer("r1", "200", 0.3)
    assert (await world.round())["u1"].counts == (1, 1, 0, 0)


async def test_the_series_count_the_requests_of_each_step(world):
    body = None
    for burst in (4, 0, 2):
        world.answer("r1", "200", 0.05, times=burst)
        world.answer("r2", "500", 1.0, times=burst // 2)
        await world.round()
    body = await world.analytics.series(KEY, T0 - 10, T0 + 30, 10)
    assert body["timestamps"] == [T0 - 10, T0, T0 + 10, T0 + 20]
    series = body["series"]
    assert series["requests"] == {"total": [None, 6, 0, 3], "2xx": [None, 4, 0, 2], "4xx": [None, 0, 0, 0],
                                  "5xx": [None, 2, 0, 1]}
    assert series["requests_share"]["5xx"] == [None, pytest.approx(1 / 3), None, pytest.approx(1 / 3)]
    assert series["latency_seconds"]["p50"][1] == pytest.approx(0.05, rel=RELATIVE_ACCURACY * 1.0001)
    assert series["latency_seconds"]["p99"][1] == pytest.approx(1.0, rel=RELATIVE_ACCURACY * 1.0001)
    assert series["running_replicas"] == [None, 2, 2, 2] and series["max_replicas"] == [None, 3, 3, 3]
    # One step over the whole range: every request in it.
    whole = await world.analytics.series(KEY, T0, T0 + 30, 30)
    assert whole["series"]["requests"]["total"] == [9] and whole["resolution"] == 10
    assert await world.analytics.series(EndpointKey("alice", "nope")) is None


async def test_openmetrics_figures_are_exact_at_any_moment_and_quantiles_cover_the_window(world):
    world.answer("r1", "200", 0.1, times=9)
    world.answer("r1", "200", 2.0)
    figures = world.analytics.figures(KEY)  # no round yet: the read takes the tap itself
    assert figures.requests == {("r1", "200"): 10}
    assert figures.latency_count == 10 and figures.latency_sum_s == pytest.approx(2.9)
    assert figures.quantiles == {0.5: 0.1, 0.9: 0.1, 0.95: 2.0, 0.99: 2.0}
    await world.round()  # a round takes nothing away from the cumulative counts
    world.mono.t += 300  # the window moves past those requests
    world.answer("r2", "429", 0.4)
    figures = world.analytics.figures(KEY)
    assert figures.requests == {("r1", "200"): 10, ("r2", "429"): 1} and figures.latency_count == 11
    assert figures.quantiles == {0.5: 0.4, 0.9: 0.4, 0.95: 0.4, 0.99: 0.4}
    assert world.analytics.figures(EndpointKey("alice", "nope")) is None


async def test_answers_beyond_the_tap_limit_are_still_counted(world, monkeypatch):
    monkeypatch.setattr(proxy_metrics, "TAP_LIMIT", 3)
    world.answer("r1", "200", 0.1, times=5)
    world.answer("r1", "503", 0.1, times=2)
    figures = world.analytics.figures(KEY)
    assert figures.requests == {("r1", "200"): 5, ("r1", "503"): 2}
    assert figures.latency_count == 3  # only the kept ones have latencies


async def test_traffic_is_each_endpoints_requests_and_body_bytes_so_far(world):
    world.metrics.transferred(NAME, 100, 2000)
    world.answer("r1", "200", 0.1)
    world.metrics.transferred(NAME, 50, 0)
    world.answer("r1", "500", 0.1)
    world.metrics.transferred(NAME, 7, 7, demand=False)  # the controller's probe: not usage
    world.answer("r1", "200", 0.1, demand=False)
    assert world.analytics.traffic() == {"u1": (KEY, 2, 150, 2000)}  # the tap taken: exact now
    await world.round()  # a round takes nothing from the totals
    world.answer("r1", "200", 0.1)
    assert world.analytics.traffic() == {"u1": (KEY, 3, 150, 2000)}


def test_the_tap_is_off_until_asked_for():
    metrics = ProxyMetrics(PendingCounter(), dict)
    metrics.answered(NAME, "r1", "200", 0.1)
    assert metrics.take_answers() == {}
    metrics.tap()
    metrics.answered(NAME, "r1", "200", 0.1)
    metrics.answered(NAME, "r1", "200", 0.1, demand=False)
    [answers] = metrics.take_answers().values()
    assert answers.kept == [("r1", "200", 0.1)] and metrics.take_answers() == {}


async def test_a_recreated_endpoint_starts_empty(world):
    world.answer("r1", "200", 0.1, times=4)
    await world.round()
    world.endpoints.intents[KEY] = intent(uid="u2")  # deleted and created again under the same name
    world.answer("r1", "200", 0.1)
    await world.round()
    body = await world.analytics.series(KEY, T0, T0 + 20, 10)
    assert body["series"]["requests"]["total"] == [None, 1]
    assert world.analytics.figures(KEY).requests == {("r1", "200"): 1}
    assert set(world.analytics._states) == {"u2"}


async def test_docker_stats_that_fail_or_hang_give_no_reading_and_old_ones_age_out(world):
    poller = UsagePoller(lambda: ["r1", "r2", "r3"], world.runtime, interval_s=10.0, timeout_s=0.01, clock=world.mono)
    world.runtime.usages = {"r1": Usage(10.0, 5, None), "r2": RuntimeFailure("stats", "replica r2", "gone")}
    await poller.poll()  # r3 hangs: the timeout ends it
    assert {rid: r.cpu_percent for rid, r in poller.latest().items()} == {"r1": 10.0}
    world.runtime.usages = {}
    world.mono.t += 31
    assert poller.latest() == {}


class UsedNVML(FakeNVML):
    def __init__(self, devices, used):
        super().__init__(devices)
        self.used = used

    def nvmlDeviceGetMemoryInfo(self, handle):
        total = self.devices[handle][2]
        return _Memory(total=total, free=total - self.used[handle], used=self.used[handle])


def test_gpu_sampler_reads_memory_in_use_by_uuid():
    nvml = UsedNVML(HOST, used=[40 << 30, 1 << 30, 80 << 30, 0])
    sampler = GpuSampler(nvml, read_inventory(nvml))
    assert sampler.memory_used(["GPU-h1", "GPU-h0"]) == {"GPU-h1": 80 << 30, "GPU-h0": 40 << 30}
    sampler.close()


async def test_gpu_usage_and_vram_are_read_only_for_replicas_holding_gpus():
    nvml = UsedNVML(HOST, used=[40 << 30, 1 << 30, 80 << 30, 0])
    inventory = read_inventory(nvml)
    allocator = GpuAllocator(inventory)
    allocator.assign("r1", 2, "nvidia-h100")  # GPU-h0 (10 %) and GPU-h1 (97 %)
    sampler = GpuSampler(nvml, inventory)
    w = World(gpus=allocator, gpu_sampler=sampler)
    w.runtime.usages = {"r1": Usage(100.0, 1, None), "r2": Usage(100.0, 1, None)}
    try:
        await w.analytics.usage.poll()
        figures = w.analytics.figures(KEY)
        assert figures.replicas["r1"].gpu_percent == pytest.approx(53.5)
        assert figures.replicas["r1"].gpu_memory_bytes == 120 << 30  # summed over its GPUs
        assert figures.replicas["r2"].gpu_percent is None and figures.replicas["r2"].gpu_memory_bytes is None
        sample = (await w.round())["u1"]
        assert sample.gauge("gpu_memory_usage_bytes") == 120 << 30  # the mean over replicas that have GPUs
    finally:
        await w.analytics.close()
        sampler.close()


async def test_a_failing_gpu_gives_no_gpu_reading_but_keeps_cpu():
    class Broken(UsedNVML):
        def nvmlDeviceGetUtilizationRates(self, handle):
            raise self.NVMLError("GPU is lost")

    nvml = Broken(HOST, used=[0, 0, 0, 0])
    inventory = read_inventory(nvml)
    allocator = GpuAllocator(inventory)
    allocator.assign("r1", 1, "nvidia-l4")
    w = World(gpus=allocator, gpu_sampler=GpuSampler(nvml, inventory))
    w.runtime.usages = {"r1": Usage(20.0, 1, None), "r2": Usage(20.0, 1, None)}
    await w.analytics.usage.poll()
    reading = w.analytics.usage.latest()["r1"]
    assert (reading.cpu_percent, reading.gpu_percent) == (20.0, None)
    await w.analytics.close()


async def test_the_sampler_runs_in_the_middle_of_each_bucket():
    w = World()
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)
        w.wall.t += seconds
        if len(sleeps) == 3:
            raise asyncio.CancelledError

    w.analytics._sleep = sleep
    w.wall.t = T0 + 2.0
    with pytest.raises(asyncio.CancelledError):
        await w.analytics.run()
    assert sleeps == [pytest.approx(3.0), pytest.approx(10.0), pytest.approx(10.0)]
    assert [s.t for s in w.analytics._states["u1"].ring.between(0, math.inf)] == [T0, T0 + 10]
    await w.analytics.close()


async def test_the_collector_puts_replicas_usage_and_engine_signals_on_the_main_metrics(world):
    world.runtime.usages = {"r1": Usage(100.0, 7, None), "r2": Usage(40.0, 9, None)}
    await world.analytics.usage.poll()
    world.analytics.engines._latest = {"r2": Scraped(KEY, EngineSignals(queue=1.0, running=4.0, kv_cache=0.2), world.mono.t)}
    registry = CollectorRegistry()
    registry.register(world.analytics.collector)
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}
    assert values[("endpointd_endpoint_running_replicas", (("endpoint", NAME),))] == 2
    assert values[("endpointd_endpoint_max_replicas", (("endpoint", NAME),))] == 3
    assert values[("endpointd_replica_cpu_usage_percent", (("endpoint", NAME), ("replica", "r1")))] == 50.0
    assert values[("endpointd_replica_memory_usage_bytes", (("endpoint", NAME), ("replica", "r2")))] == 9
    assert values[("endpointd_engine_running_requests", (("endpoint", NAME), ("replica", "r2")))] == 4.0
    assert values[("endpointd_engine_kv_cache_usage_ratio", (("endpoint", NAME), ("replica", "r2")))] == 0.2
    assert ("endpointd_engine_queue_requests", (("endpoint", NAME), ("replica", "r1"))) not in values


def test_the_engine_scraper_reads_the_ready_replicas_from_the_route_table():
    w = World()
    assert [(key, r.id, r.api_key) for key, r in w.analytics._ready_replicas()] == [(KEY, "r1", "k1"), (KEY, "r2", "k2")]


# --- the history --------------------------------------------------------------------------------


async def rounds(world, n, burst=1):
    for _ in range(n):
        world.answer("r1", "200", 0.1, times=burst)
        await world.round()


async def test_history_steps_are_written_when_they_close_and_read_after_a_restart(tmp_path):
    w = World(tmp_path)
    await w.analytics.open()
    await rounds(w, 30)  # the first 5-minute step, T0 .. T0+300
    path = tmp_path / "analytics.db"
    assert await History_rows(path) == 0  # still open
    await rounds(w, 1)  # the first round of the next step closes it
    assert await History_rows(path) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await w.analytics.close()  # writes the open step (one round of it)
    assert await History_rows(path) == 2
    # Another process, a day later: the ring is empty, the history answers.
    later = World(tmp_path)
    later.wall.t = T0 + 86_400
    await later.analytics.open()
    body = await later.analytics.series(KEY, T0, T0 + 600, 300)
    assert body["resolution"] == 300 and body["series"]["requests"]["total"] == [30, 1]
    assert body["series"]["running_replicas"] == [2, 2]
    await later.analytics.close()


async def test_a_restart_inside_a_step_adds_to_it(tmp_path):
    first = World(tmp_path)
    await first.analytics.open()
    await rounds(first, 10, burst=2)  # T0 .. T0+100
    await first.analytics.close()
    second = World(tmp_path)
    second.wall.t = first.wall.t
    await second.analytics.open()
    await rounds(second, 21, burst=1)  # T0+100 .. T0+310: closes the step
    body = await second.analytics.series(KEY, T0, T0 + 300, 300)
    assert body["resolution"] == 300 and body["series"]["requests"]["total"] == [20 + 20]
    await second.analytics.close()


async def test_a_coarse_query_includes_the_step_not_yet_written(tmp_path):
    before = World(tmp_path)  # an earlier process, ten minutes before: one step in the history
    before.wall.t = T0 - 600 + 5
    await before.analytics.open()
    await rounds(before, 1, burst=1)
    await before.analytics.close()
    w = World(tmp_path)
    await w.analytics.open()
    await rounds(w, 5, burst=3)
    # `from` before this process' first round: the history's resolution, with the open step from memory.
    body = await w.analytics.series(KEY, T0 - 600, T0 + 300, 300)
    assert body["resolution"] == 300 and body["series"]["requests"]["total"] == [1, None, 15]
    await w.analytics.close()


async def test_with_no_history_before_this_process_the_ring_answers_at_its_resolution(tmp_path):
    w = World(tmp_path)  # a fresh endpointd: the last 15 minutes reach back before its first round
    await w.analytics.open()
    await rounds(w, 5, burst=3)
    body = await w.analytics.series(KEY, T0 - 900, T0 + 50)
    assert body["resolution"] == 10
    assert sum(v or 0 for v in body["series"]["requests"]["total"]) == 15
    await w.analytics.close()


async def test_forget_erases_an_endpoint_from_memory_and_history(tmp_path):
    w = World(tmp_path)
    await w.analytics.open()
    await rounds(w, 31)
    assert await History_rows(tmp_path / "analytics.db") == 1
    await w.analytics.forget("u1")
    assert await History_rows(tmp_path / "analytics.db") == 0
    assert "u1" not in w.analytics._states
    del w.endpoints.intents[KEY]
    await rounds(w, 31)  # nothing of it comes back
    assert await History_rows(tmp_path / "analytics.db") == 0
    await w.analytics.close()


async def test_history_prunes_old_rows_then_the_oldest_beyond_the_bound(tmp_path):
    history = await History.open(tmp_path / "analytics.db")
    try:
        agg = Aggregate()
        agg.add(sample(0, total=1))
        await history.add([("u1", t, agg) for t in range(0, 3000, 300)] + [("u2", 1500, agg)])
        assert await history.rows() == 11
        assert await history.prune(older_than=900, max_rows=100) == 3  # t = 0, 300, 600
        assert await history.prune(older_than=0, max_rows=5) == 3  # the oldest three of the eight left
        assert [t for t, _ in await history.read("u1", 0, 10_000)] == [1800, 2100, 2400, 2700]
        assert [t for t, _ in await history.read("u2", 0, 10_000)] == [1500]
    finally:
        await history.close()


async def History_rows(path) -> int:
    history = await History.open(path)
    try:
        return await history.rows()
    finally:
        await history.close()


def test_t0_is_the_start_of_a_history_step():
    assert T0 % STEP == 0


# --- the routes -------------------------------------------------------------------------------

class FakeStore:
    TOKENS = {"alice-token": Identity("alice"), "bob-token": Identity("bob"), "admin-token": Identity("admin", is_admin=True)}

    async def verify_token(self, token):
        return self.TOKENS.get(token)


@pytest.fixture
async def routes(world):
    management = ManagementApi.__new__(ManagementApi)  # only identity() and member() are used
    management.store = FakeStore()
    v2 = web.Application(middlewares=[errors_middleware])
    v2[API] = management
    api_metrics.add_routes(v2.router, management, world.analytics)
    app = web.Application()
    app[PIPELINE] = Pipeline(ProxyConfig(), InMemoryControlPlane())  # the middleware asks it about Host routing
    app.add_subapp("/v2", v2)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def get(client, path, token="alice-token", **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.get(path, headers=headers, params=params) as response:
        return response.status, response.headers.get("Content-Type"), await response.read()


async def test_open_metrics_route_serves_openmetrics_to_the_namespace_only(routes, world):
    world.answer("r1", "200", 0.1, times=2)
    status, content_type, body = await get(routes, "/v2/endpoint/alice/llm/open-metrics")
    assert status == 200 and content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert sum(s.value for s in families["http_requests"].samples) == 2
    assert (await get(routes, "/v2/endpoint/alice/llm/open-metrics", token="admin-token"))[0] == 200
    assert (await get(routes, "/v2/endpoint/alice/llm/open-metrics", token="bob-token"))[0] == 403
    assert (await get(routes, "/v2/endpoint/alice/llm/open-metrics", token=None))[0] == 401
    status, _, body = await get(routes, "/v2/endpoint/alice/nope/open-metrics")
    assert status == 404 and b"alice/nope does not exist" in body


async def test_series_route_answers_json_and_refuses_bad_queries(routes, world):
    world.answer("r1", "200", 0.1, times=3)
    await world.round()
    status, content_type, body = await get(routes, "/v2/endpoint/alice/llm/metrics", **{
        "from": "2023-11-14T22:15:00Z", "to": str(T0 + 10), "step": "10s"})
    assert status == 200 and content_type.startswith("application/json")
    found = json.loads(body)
    assert found["from"] == T0 and found["series"]["requests"]["total"] == [3]
    assert (await get(routes, "/v2/endpoint/alice/llm/metrics"))[0] == 200  # the last hour by default
    for params, message in (
        ({"from": "yesterday"}, b"give RFC 3339"),
        ({"from": "2023-11-14T22:15:00"}, b"has no time zone"),
        ({"to": "1e300"}, b"unix seconds must be between"),
        ({"step": "-5"}, b"`step` must be more than 0"),
        ({"step": "often"}, b"not a number of seconds"),
        ({"from": str(T0 + 100), "to": str(T0)}, b"must be later than"),
    ):
        status, _, body = await get(routes, "/v2/endpoint/alice/llm/metrics", **params)
        assert (status, message in body) == (400, True), (params, body)
    assert (await get(routes, "/v2/endpoint/alice/llm/metrics", token="bob-token"))[0] == 403
    assert (await get(routes, "/v2/endpoint/alice/nope/metrics"))[0] == 404


def test_openapi_paths_describe_the_routes_and_their_errors():
    app = web.Application()
    api_metrics.add_routes(app.router, None, None)
    served = {(r.method.lower(), "/v2" + r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(method, path) for path, ops in api_metrics.OPENAPI_PATHS.items() for method in ops}
    assert served == documented
    for ops in api_metrics.OPENAPI_PATHS.values():
        for op in ops.values():
            for code, response in op["responses"].items():
                if code != "200":
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
