"""The analytics of every endpoint, as the reference service's Analytics tab and OpenMetrics
export show them: a sampler that records each endpoint's requests, latencies, pending requests,
replicas, CPU, memory, GPU, VRAM and engine signals every `analytics_interval_s`, the last day in
memory at that resolution and 30 days of 5-minute steps in `DATA_DIR/analytics.db`.

Where each figure comes from:
- requests and latencies: the proxy's tap (ProxyMetrics.take_answers), taken by every round and
  by every OpenMetrics or traffic read, so cumulative counts are exact at any moment; the control
  plane's own probes are not in it; the body bytes in and out beside them, for usage (`traffic`);
- pending requests: the proxy's PendingCounter at the round;
- running replicas and their max: the controller (its ready replicas, the intent's max);
- CPU and memory: `docker stats` of every ready replica, all at once, each under a timeout, by a
  poller of its own (a slow Docker engine never delays a round); CPU in percent of the replica's
  CPU limit;
- GPU utilization and memory: NVML, for replicas that hold GPUs;
- engine queue, running and KV cache: each replica's own /metrics (engine_metrics.py).

Series are keyed by the endpoint's incarnation uid: a re-created endpoint of the same name starts
empty, and `forget(uid)` (on delete) erases an endpoint's memory and history. A query reads the
in-memory ring when it covers the query's start, else the persisted history, and re-buckets
either to the query's step (analytics_series.py). Time: the wall clock stamps buckets (shown to
people, compared across restarts), the monotonic clock measures the OpenMetrics window and the
age of readings.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from autoscaler.model.intent import Intent
from autoscaler.model.settings import SettingsError
from autoscaler.observe import openmetrics
from autoscaler.observe.analytics_series import COUNTS, Aggregate, Ring, Sample, Sketch, rebucket, render, status_class
from autoscaler.observe.analytics_store import FILE as HISTORY_FILE
from autoscaler.observe.analytics_store import History
from autoscaler.observe.engine_metrics import EngineScraper, EngineSignals, Scraped
from autoscaler.observe.loops import Loops
from autoscaler.observe.openmetrics import ReplicaFigures  # a method named openmetrics hides the module in the class
from engines.errors import EndpointdError
from engines.runtime import EndpointKey, Usage
from proxy.core.config import setting
from proxy.core.control import Replica, RouteEntry
from proxy.core.metrics import Answers
from proxy.core.pending import PendingSnapshot

log = logging.getLogger("endpointd.analytics")

# Bucket slots one endpoint's ring may have (memory / interval): 24 h at 10 s is 8,640; a
# 0.1 s interval for a whole day would be 864,000 — the most a test or a demo needs.
MAX_RING_SLOTS = 1_000_000
# Latencies the OpenMetrics window keeps per endpoint: 5 minutes at 600 requests/s, exactly;
# beyond it the oldest go first (the quantiles are then over the newest requests).
WINDOW_MAX_LATENCIES = 200_000
# A range query gives at most this many points (Prometheus' own limit for a range query).
MAX_POINTS = 11_000
DEFAULT_POINTS = 360  # a query without `step`: the last hour at 10 s
DEFAULT_RANGE_S = 3600.0  # a query without `from`: the last hour, as the reference's tab opens
MAX_STEP_S = 86_400.0
STALE_AFTER = 3  # poller intervals after which a replica's usage is no longer shown


@dataclass(frozen=True)
class AnalyticsConfig:
    """The `[analytics]` section; each key also as ENDPOINTD_<KEY> and --<key> (prefixed, so no
    key of another section shares an environment variable or a flag with them)."""

    analytics_interval_s: float = setting(
        # The reference service's analytics resolution; fine enough to see a burst, cheap enough
        # for every endpoint of a host (one docker stats call per replica per round).
        10.0, min=0.1, max=300.0,
        help="how often every endpoint is sampled: the resolution of the last day's series",
    )
    analytics_memory_s: float = setting(
        86_400.0, min=60.0, max=7 * 86_400.0, help="how far back samples are kept in memory at that resolution",
    )
    analytics_history_step_s: int = setting(
        300, min=60, max=3600, help="resolution of the history kept in DATA_DIR/analytics.db",
    )
    analytics_history_days: float = setting(30.0, min=1.0, max=366.0, help="how long the history is kept")
    analytics_history_max_rows: int = setting(
        # One row per endpoint and step: 2 million rows is 230 endpoints for 30 days, about 1 GB
        # for busy ones; beyond it the oldest rows go first.
        2_000_000, min=1000, max=100_000_000, help="most rows the history keeps (the oldest go first)",
    )
    analytics_window_s: float = setting(
        300.0, min=1.0, max=3600.0,
        help="the OpenMetrics latency_distribution quantiles are over the requests of this last window",
    )
    analytics_usage_timeout_s: float = setting(
        # docker stats takes about a second (it waits for a second CPU reading); 5 s means the
        # Docker engine is struggling, and the reading is skipped rather than awaited.
        5.0, min=0.1, max=60.0, help="time reading one replica's CPU and memory (docker stats) may take",
    )
    engine_scrape_interval_s: float = setting(
        5.0, min=0.1, max=300.0, help="how often each ready replica's own /metrics is read (engine queue, KV cache)",
    )
    engine_scrape_timeout_s: float = setting(
        2.0, min=0.05, max=60.0, help="time one engine's /metrics may take to answer",
    )

    def __post_init__(self) -> None:
        slots = self.analytics_memory_s / self.analytics_interval_s
        if slots > MAX_RING_SLOTS:
            raise SettingsError(
                f"analytics.analytics_memory_s / analytics.analytics_interval_s = {slots:.0f} buckets per endpoint, "
                f"more than {MAX_RING_SLOTS}: raise the interval or keep less in memory"
            )
        if self.analytics_history_step_s < self.analytics_interval_s:
            raise SettingsError(
                f"analytics.analytics_history_step_s = {self.analytics_history_step_s} is finer than "
                f"analytics.analytics_interval_s = {self.analytics_interval_s:g}: it must be at least the interval"
            )

    @property
    def ring_slots(self) -> int:
        return max(1, math.ceil(self.analytics_memory_s / self.analytics_interval_s))


# --- what the service reads (Controller, DockerRuntime, ProxyMetrics, the route table, NVML) ---


class Endpoints(Protocol):
    def keys(self) -> list[EndpointKey]: ...
    def intent(self, key: EndpointKey) -> Intent | None: ...
    def ready_ids(self, key: EndpointKey) -> list[str]: ...


class UsageSource(Protocol):
    async def usage(self, replica_id: str) -> Usage: ...


class AnswerSource(Protocol):
    def tap(self) -> None: ...
    def take_answers(self) -> dict[str, Answers]: ...


class RouteSource(Protocol):
    def lookup(self, namespace: str, name: str) -> RouteEntry | None: ...


class GpuHolders(Protocol):
    def held_by(self, replica_id: str) -> tuple[str, ...]: ...


class GpuReadings(Protocol):
    def utilization(self, ids: Iterable[str]) -> dict[str, float]: ...
    def memory_used(self, ids: Iterable[str]) -> dict[str, int]: ...


class QueryError(EndpointdError, ValueError):
    """A series query the service cannot answer as asked; the message says what to change."""

    status = 400


# --- CPU, memory, GPU: the usage poller ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    cpu_percent: float | None  # as docker stats shows it: 100 = one CPU busy
    memory_bytes: float | None
    gpu_percent: float | None
    gpu_memory_bytes: float | None
    at: float  # monotonic


class UsagePoller:
    """Every ready replica's CPU and memory (docker stats, all at once, each under a timeout) and,
    for those holding GPUs, GPU utilization and memory (NVML); `latest()` is what was read
    within STALE_AFTER intervals."""

    def __init__(
        self,
        replicas: Callable[[], list[str]],
        runtime: UsageSource,
        *,
        interval_s: float,
        timeout_s: float,
        gpus: GpuHolders | None = None,
        gpu_sampler: GpuReadings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._replicas = replicas
        self._runtime = runtime
        self.interval_s = interval_s
        self._timeout_s = timeout_s
        self._gpus = gpus
        self._gpu_sampler = gpu_sampler
        self._clock = clock
        self._latest: dict[str, Reading] = {}

    def latest(self) -> dict[str, Reading]:
        oldest = self._clock() - STALE_AFTER * self.interval_s
        return {rid: r for rid, r in self._latest.items() if r.at >= oldest}

    async def poll(self) -> None:
        rids = list(self._replicas())
        for gone in set(self._latest) - set(rids):
            del self._latest[gone]
        usages = await asyncio.gather(
            *(asyncio.wait_for(self._runtime.usage(rid), self._timeout_s) for rid in rids), return_exceptions=True,
        )
        now = self._clock()
        for rid, usage in zip(rids, usages, strict=True):
            if isinstance(usage, BaseException) and not isinstance(usage, Exception):
                raise usage
            cpu = memory = None
            if isinstance(usage, Usage):
                cpu, memory = usage.cpu_percent, float(usage.memory_bytes)
            gpu, vram = self._gpu(rid)
            if cpu is None and memory is None and gpu is None and vram is None:
                continue  # nothing read this round: the last reading ages out
            self._latest[rid] = Reading(cpu, memory, gpu, vram, now)

    def _gpu(self, rid: str) -> tuple[float | None, float | None]:
        if self._gpus is None or self._gpu_sampler is None:
            return None, None
        ids = self._gpus.held_by(rid)
        if not ids:
            return None, None
        try:
            utilization = self._gpu_sampler.utilization(ids)
            used = self._gpu_sampler.memory_used(ids)
        except Exception as error:  # noqa: BLE001 - NVML errors (a GPU fell off the bus): no reading
            log.warning("could not read the GPUs of replica %s: %s", rid, error)
            return None, None
        return sum(utilization.values()) / len(utilization), float(sum(used.values()))

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("usage round failed")
            await asyncio.sleep(self.interval_s)


# --- one endpoint incarnation's state -------------------------------------------------------


class _Endpoint:
    """What the service keeps of one endpoint incarnation, in memory."""

    def __init__(self, key: EndpointKey, ring: Ring) -> None:
        self.key = key
        self.ring = ring
        # Since the last round: counts (COUNTS order) and latencies.
        self.counts = [0] * len(COUNTS)
        self.sketch = Sketch()
        # Since creation (or endpointd's start): the OpenMetrics counters.
        self.requests: dict[tuple[str, str], int] = {}
        self.bytes_in = 0  # request and response body bytes (usage reads them)
        self.bytes_out = 0
        self.latency_count = 0
        self.latency_sum_s = 0.0
        # The OpenMetrics window: (monotonic time taken, latencies answered since the take before).
        self.window: deque[tuple[float, array]] = deque()
        self.window_size = 0
        self.open_step: int | None = None  # start of the history step the last sample fell in

    def add(self, answers: Answers, classes: dict[str, int | None], taken_at: float, window_s: float) -> None:
        chunk = array("d")
        self.bytes_in += answers.bytes_in
        self.bytes_out += answers.bytes_out
        counts, requests = self.counts, self.requests
        for replica, code, duration in answers.kept:
            requests[(replica, code)] = requests.get((replica, code), 0) + 1
            counts[0] += 1
            cls = classes.get(code, -1)
            if cls == -1:
                cls = classes[code] = status_class(code)
            if cls is not None:
                counts[cls + 1] += 1
            if duration is not None:
                chunk.append(duration)
        for (replica, code), n in answers.beyond.items():
            requests[(replica, code)] = requests.get((replica, code), 0) + n
            counts[0] += n
            cls = status_class(code)
            if cls is not None:
                counts[cls + 1] += n
        for duration in chunk:
            self.sketch.add(duration)
        self.latency_count += len(chunk)
        self.latency_sum_s += sum(chunk)
        if chunk:
            self.window.append((taken_at, chunk))
            self.window_size += len(chunk)
        self.trim(taken_at, window_s)

    def trim(self, now: float, window_s: float) -> None:
        window = self.window
        while window and (window[0][0] < now - window_s or self.window_size - len(window[0][1]) >= WINDOW_MAX_LATENCIES):
            self.window_size -= len(window.popleft()[1])

    def window_latencies(self) -> list[float]:
        latencies: list[float] = []
        for _, chunk in self.window:
            latencies.extend(chunk)
        return latencies[-WINDOW_MAX_LATENCIES:]

    def take(self) -> tuple[list[int], Sketch]:
        counts, sketch = self.counts, self.sketch
        self.counts, self.sketch = [0] * len(COUNTS), Sketch()
        return counts, sketch


# --- queries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    start: float  # aligned to the resolution
    end: float
    step: float  # a multiple of the resolution
    count: int
    fine: bool  # from the in-memory ring (else the history)
    resolution: float


def plan_query(
    start: float | None, end: float | None, step: float | None, *, now: float, fine_since: float,
    fine_s: float, coarse_s: float, max_range_s: float,
) -> Plan:
    """Which resolution answers the query and how its steps fall: the ring's when it covers
    `start`, else the history's; `step` rounded up to a multiple of that resolution."""
    end = now if end is None else end
    start = end - DEFAULT_RANGE_S if start is None else start
    if not end > start:
        raise QueryError(f"`to` ({end:g}) must be later than `from` ({start:g})")
    if end - start > max_range_s:
        raise QueryError(f"the range is {end - start:g} s; at most {max_range_s:g} s of history is kept")
    fine = start >= fine_since
    resolution = fine_s if fine else float(coarse_s)
    if step is None:
        step = (end - start) / DEFAULT_POINTS
    elif not 0 < step <= MAX_STEP_S:
        raise QueryError(f"`step` must be more than 0 and at most {MAX_STEP_S:g} seconds, got {step:g}")
    step = max(1, math.ceil(step / resolution - 1e-9)) * resolution
    aligned = math.floor(start / resolution + 1e-9) * resolution
    count = math.ceil((end - aligned) / step - 1e-9)
    if count > MAX_POINTS:
        least = math.ceil((end - aligned) / MAX_POINTS / resolution) * resolution
        raise QueryError(f"a step of {step:g} s gives {count} points over this range, more than {MAX_POINTS}: "
                         f"use a step of at least {least:g} s")
    return Plan(aligned, end, step, count, fine, resolution)


# --- the service ----------------------------------------------------------------------------


class Analytics:
    def __init__(
        self,
        config: AnalyticsConfig,
        *,
        endpoints: Endpoints,
        runtime: UsageSource,
        answers: AnswerSource,
        pending: Callable[[], PendingSnapshot],
        routes: RouteSource,
        gpus: GpuHolders | None = None,
        gpu_sampler: GpuReadings | None = None,
        cpu_limit: Callable[[Intent], float | None] | None = None,
        data_dir: Path | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`cpu_limit(intent)`: the CPUs one replica may use (its limit), for CPU in percent of
        it; without it CPU is in percent of one CPU. `data_dir`: where analytics.db goes; None
        keeps no history (tests)."""
        self.config = config
        self._endpoints = endpoints
        self._answers = answers
        self._pending = pending
        self._routes = routes
        self._cpu_limit = cpu_limit
        self._history_path = data_dir / HISTORY_FILE if data_dir is not None else None
        self._wall = wall
        self._clock = clock
        self._sleep = sleep
        self._states: dict[str, _Endpoint] = {}  # uid -> state
        self._classes: dict[str, int | None] = {}  # status code -> class index (a cache)
        self._forgotten: set[str] = set()
        self._first_sample: float | None = None  # wall time of this process' first round
        self._history: History | None = None
        self._db_lock = asyncio.Lock()  # one writer at a time on the history's one connection
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.usage = UsagePoller(
            self._ready_replica_ids, runtime, interval_s=config.analytics_interval_s,
            timeout_s=config.analytics_usage_timeout_s, gpus=gpus, gpu_sampler=gpu_sampler, clock=clock,
        )
        self.engines = EngineScraper(
            self._ready_replicas, self._scrape_session, interval_s=config.engine_scrape_interval_s,
            timeout_s=config.engine_scrape_timeout_s, clock=clock,
        )
        self.collector = _Collector(self)
        answers.tap()

    # --- lifetime -------------------------------------------------------------------------

    def _scrape_session(self) -> aiohttp.ClientSession:
        """The engine scraper's session, from `open` to `close` (a round outside them fails)."""
        if self._session is None:
            raise RuntimeError("analytics is not open: no session to scrape engines with")
        return self._session

    async def open(self) -> None:
        """Open the history and the scrape session (what `start` does before its loops)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        if self._history_path is not None and self._history is None:
            self._history = await History.open(self._history_path)

    async def start(self, loops: Loops | None = None) -> None:
        """Open; then start the sampler, usage and engine scrape loops under `loops` (serve's,
        which counts their failures)."""
        await self.open()
        loops = loops or Loops()
        self._tasks = [
            loops.start("analytics", self.run),
            loops.start("analytics usage", self.usage.run),
            loops.start("engine metrics", self.engines.run),
        ]

    async def close(self) -> None:
        """Stop the loops, write the history steps still open (the next start adds to them)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self._write([(uid, state.open_step, agg) for uid, state in self._states.items()
                               if state.open_step is not None and (agg := self._step_of(state, state.open_step))])
        except Exception:  # noqa: BLE001 - a history write that fails at shutdown loses one step
            log.exception("could not write the open analytics steps at shutdown")
        if self._history is not None:
            await self._history.close()
            self._history = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def lifetime(self, app: Any) -> AsyncIterator[None]:
        """For aiohttp's cleanup_ctx: started with the app, closed with it."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    async def forget(self, uid: str) -> None:
        """An endpoint was deleted: its series go, in memory and in the history."""
        self._forgotten.add(uid)
        self._states.pop(uid, None)
        if self._history is not None:
            async with self._db_lock:
                await self._history.forget(uid)

    # --- the sampler -------------------------------------------------------------------------

    async def tick(self) -> dict[str, Sample]:
        """One round: a sample of every endpoint into its ring; each history step that the
        round closed is written. Returns the samples by uid."""
        now, mono = self._wall(), self._clock()
        live = self._live()
        self._drain(live, mono)
        if self._first_sample is None:
            self._first_sample = now
        counts = self._pending()
        usage, engines = self.usage.latest(), self.engines.latest()
        ring_t = math.floor(now / self.config.analytics_interval_s + 1e-9) * self.config.analytics_interval_s
        step_s = self.config.analytics_history_step_s
        samples: dict[str, Sample] = {}
        closed: list[tuple[str, int, Aggregate]] = []
        for uid, (key, intent) in live.items():
            state = self._state(uid, key)
            ready = self._endpoints.ready_ids(key)
            replicas = {rid: self._figures(rid, intent, usage, engines) for rid in ready}
            taken, sketch = state.take()
            sample = Sample(ring_t, taken, sketch, _gauges(counts.pending(str(key)), len(ready), intent.max_replicas, replicas),
                            {rid: _replica_gauges(f) for rid, f in replicas.items()})
            state.ring.put(sample)
            samples[uid] = sample
            step = int(ring_t // step_s * step_s)
            if state.open_step is not None and step > state.open_step:
                agg = self._step_of(state, state.open_step)
                if agg is not None:
                    closed.append((uid, state.open_step, agg))
            state.open_step = step
        for gone in set(self._states) - set(live):
            del self._states[gone]  # gone from the controller; its history stays until forget()
        if closed:
            await self._write(closed)
            await self._prune(now)
        return samples

    async def run(self) -> None:
        """A round in the middle of every bucket, so that late or early rounds still land in theirs."""
        interval = self.config.analytics_interval_s
        while True:
            now = self._wall()
            middle = (math.floor(now / interval) + 0.5) * interval
            if middle <= now + interval * 0.05:
                middle += interval
            await self._sleep(middle - now)
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("analytics round failed")

    # --- reading ------------------------------------------------------------------------------

    def figures(self, key: EndpointKey) -> openmetrics.EndpointFigures | None:
        """The OpenMetrics export's figures of an endpoint now; None when it does not exist."""
        intent = self._endpoints.intent(key)
        if intent is None:
            return None
        mono = self._clock()
        self._drain(self._live(), mono)
        state = self._states.get(intent.uid)
        if state is not None:
            state.trim(mono, self.config.analytics_window_s)
        ready = self._endpoints.ready_ids(key)
        usage, engines = self.usage.latest(), self.engines.latest()
        return openmetrics.EndpointFigures(
            window_s=self.config.analytics_window_s,
            quantiles=openmetrics.exact_quantiles(state.window_latencies() if state else []),
            latency_count=state.latency_count if state else 0,
            latency_sum_s=state.latency_sum_s if state else 0.0,
            requests=dict(state.requests) if state else {},
            pending=self._pending().pending(str(key)),
            running_replicas=len(ready),
            replicas={rid: self._figures(rid, intent, usage, engines) for rid in ready},
        )

    def traffic(self) -> dict[str, tuple[EndpointKey, int, int, int]]:
        """What each endpoint served since this process started, as counters: uid -> (its key,
        requests, request body bytes, response body bytes), the proxy's tap taken first (so they
        are exact now). The usage meter turns them into deltas."""
        live = self._live()
        self._drain(live, self._clock())
        return {
            uid: (state.key, sum(state.requests.values()), state.bytes_in, state.bytes_out)
            for uid, state in self._states.items() if uid in live
        }

    def engine_readings(self) -> dict[str, Scraped]:
        """Each ready replica's engine readings (signals and token counters), as last scraped."""
        return self.engines.latest()

    def openmetrics(self, key: EndpointKey) -> bytes | None:
        figures = self.figures(key)
        return None if figures is None else openmetrics.render(figures)

    async def series(
        self, key: EndpointKey, start: float | None = None, end: float | None = None, step: float | None = None,
    ) -> dict[str, Any] | None:
        """The dashboard's series of an endpoint (analytics_series.render); None when it does not
        exist; QueryError for a query that cannot be answered as asked."""
        intent = self._endpoints.intent(key)
        if intent is None:
            return None
        now = self._wall()
        config = self.config
        history = self._history
        history_on = history is not None
        ring_since = max(self._first_sample if self._first_sample is not None else now, now - config.analytics_memory_s)

        def planned(fine_since: float) -> Plan:
            return plan_query(
                start, end, step, now=now, fine_since=fine_since,
                fine_s=config.analytics_interval_s, coarse_s=config.analytics_history_step_s,
                max_range_s=config.analytics_history_days * 86_400 + 86_400,
            )

        plan = planned(ring_since if history_on else -math.inf)
        if history is not None and not plan.fine and ring_since > now - config.analytics_memory_s:
            # Before the ring's first sample, the history may hold nothing of this endpoint (a
            # fresh endpointd, an endpoint created since): then the ring, at its finer
            # resolution, is all there is to show.
            if not await history.read(intent.uid, int(plan.start), int(ring_since)):
                plan = planned(-math.inf)
        state = self._states.get(intent.uid)
        points: list[tuple[float, Sample | Aggregate]] = []
        if plan.fine:
            if state is not None:
                points = [(s.t, s) for s in state.ring.between(plan.start, plan.end)]
        else:
            rows = {}
            if self._history is not None:
                rows = dict(await self._history.read(intent.uid, int(plan.start), math.ceil(plan.end)))
            state = self._states.get(intent.uid)  # the read awaited: the endpoint may be gone
            if state is not None and state.open_step is not None and plan.start <= state.open_step < plan.end:
                agg = self._step_of(state, state.open_step)  # not yet written: from the ring
                if agg is not None:
                    if state.open_step in rows:
                        agg.merge(rows[state.open_step])
                    rows[state.open_step] = agg
            points = sorted(rows.items())
        steps = rebucket(points, plan.start, plan.step, plan.count)
        return render(plan.start, plan.end, plan.step, plan.resolution, steps)

    # --- internals ----------------------------------------------------------------------------

    def _live(self) -> dict[str, tuple[EndpointKey, Intent]]:
        live = {}
        for key in self._endpoints.keys():
            intent = self._endpoints.intent(key)
            if intent is not None and intent.uid not in self._forgotten:
                live[intent.uid] = (key, intent)
        return live

    def _state(self, uid: str, key: EndpointKey) -> _Endpoint:
        state = self._states.get(uid)
        if state is None:
            state = self._states[uid] = _Endpoint(key, Ring(self.config.analytics_interval_s, self.config.ring_slots))
        return state

    def _drain(self, live: Mapping[str, tuple[EndpointKey, Intent]], mono: float) -> None:
        """Fold the proxy's answers since the last take into their endpoints' state."""
        by_key = {str(key): uid for uid, (key, _) in live.items()}
        for name, answers in self._answers.take_answers().items():
            uid = by_key.get(name)
            if uid is None:
                continue  # deleted meanwhile (or a re-create not yet applied): nobody's series
            self._state(uid, live[uid][0]).add(answers, self._classes, mono, self.config.analytics_window_s)

    def _ready_replica_ids(self) -> list[str]:
        return [rid for key in self._endpoints.keys() for rid in self._endpoints.ready_ids(key)]

    def _ready_replicas(self) -> list[tuple[EndpointKey, Replica]]:
        """Ready replicas with their addresses and engine keys, from the route table."""
        found: list[tuple[EndpointKey, Replica]] = []
        for key in self._endpoints.keys():
            entry = self._routes.lookup(key.namespace, key.name)
            if entry is not None:
                found.extend((key, replica) for replica in entry.replicas)
        return found

    def _figures(self, rid: str, intent: Intent, usage: Mapping[str, Reading], engines: Mapping[str, Any]) -> ReplicaFigures:
        reading = usage.get(rid)
        scraped = engines.get(rid)
        signals: EngineSignals = scraped.signals if scraped is not None else EngineSignals()
        cpu = reading.cpu_percent if reading is not None else None
        if cpu is not None and self._cpu_limit is not None:
            try:
                cpus = self._cpu_limit(intent)
            except Exception:  # noqa: BLE001 - a spec the launcher cannot size: percent of one CPU
                cpus = None
            if cpus:
                cpu = cpu / cpus
        return ReplicaFigures(
            cpu_percent=cpu,
            memory_bytes=reading.memory_bytes if reading is not None else None,
            gpu_percent=reading.gpu_percent if reading is not None else None,
            gpu_memory_bytes=reading.gpu_memory_bytes if reading is not None else None,
            queue=signals.queue, running=signals.running, kv_cache=signals.kv_cache,
        )

    def _step_of(self, state: _Endpoint, step: int) -> Aggregate | None:
        """One history step of an endpoint, from its ring."""
        agg = None
        for sample in state.ring.between(step, step + self.config.analytics_history_step_s):
            if agg is None:
                agg = Aggregate()
            agg.add(sample)
        return agg

    async def _write(self, rows: Sequence[tuple[str, int, Aggregate]]) -> None:
        if self._history is None:
            return
        async with self._db_lock:  # checked under the lock: a forget() that came first wins
            await self._history.add([row for row in rows if row[0] not in self._forgotten])

    async def _prune(self, now: float) -> None:
        if self._history is None:
            return
        async with self._db_lock:
            await self._history.prune(int(now - self.config.analytics_history_days * 86_400),
                                      self.config.analytics_history_max_rows)


def _gauges(pending: int, running: int, max_replicas: int, replicas: Mapping[str, openmetrics.ReplicaFigures]) -> dict[str, float | None]:
    def mean(attribute: str) -> float | None:
        values = [getattr(f, attribute) for f in replicas.values() if getattr(f, attribute) is not None]
        return sum(values) / len(values) if values else None

    def total(attribute: str) -> float | None:
        values = [getattr(f, attribute) for f in replicas.values() if getattr(f, attribute) is not None]
        return sum(values) if values else None

    return {
        "pending_requests": pending, "running_replicas": running, "max_replicas": max_replicas,
        "cpu_usage_percent": mean("cpu_percent"), "memory_usage_bytes": mean("memory_bytes"),
        "gpu_usage_percent": mean("gpu_percent"), "gpu_memory_usage_bytes": mean("gpu_memory_bytes"),
        "engine_queue": total("queue"), "engine_running": total("running"), "engine_kv_cache_usage": mean("kv_cache"),
    }


def _replica_gauges(f: openmetrics.ReplicaFigures) -> dict[str, float | None]:
    return {
        "cpu_usage_percent": f.cpu_percent, "memory_usage_bytes": f.memory_bytes,
        "gpu_usage_percent": f.gpu_percent, "gpu_memory_usage_bytes": f.gpu_memory_bytes,
        "engine_queue": f.queue, "engine_running": f.running, "engine_kv_cache_usage": f.kv_cache,
    }


class _Collector(Collector):
    """The analytics' figures on the main /metrics, by endpoint (and replica), for the Grafana
    dashboard: replicas against their max, usage, engine signals. Read at scrape time."""

    def __init__(self, analytics: Analytics) -> None:
        self._analytics = analytics

    def collect(self):
        a = self._analytics
        usage, engines = a.usage.latest(), a.engines.latest()
        running = GaugeMetricFamily("endpointd_endpoint_running_replicas", "Replicas ready and taking requests", labels=["endpoint"])
        maximum = GaugeMetricFamily("endpointd_endpoint_max_replicas", "The endpoint's maxReplica setting", labels=["endpoint"])
        per_replica = {
            attribute: GaugeMetricFamily(name, about, labels=["endpoint", "replica"])
            for attribute, name, about in (
                ("cpu_percent", "endpointd_replica_cpu_usage_percent", "CPU use of each ready replica, in percent of its CPU limit"),
                ("memory_bytes", "endpointd_replica_memory_usage_bytes", "Memory use of each ready replica (without page cache)"),
                ("gpu_percent", "endpointd_replica_gpu_usage_percent", "GPU utilization of each ready replica, mean over its GPUs"),
                ("gpu_memory_bytes", "endpointd_replica_gpu_memory_usage_bytes", "GPU memory in use on each ready replica's GPUs"),
                ("queue", "endpointd_engine_queue_requests", "Requests waiting in each replica's engine (its own /metrics)"),
                ("running", "endpointd_engine_running_requests", "Requests each replica's engine is working on (its own /metrics)"),
                ("kv_cache", "endpointd_engine_kv_cache_usage_ratio", "How full each replica's engine KV cache is, 0 to 1"),
            )
        }
        for key in a._endpoints.keys():
            intent = a._endpoints.intent(key)
            if intent is None:
                continue
            name = str(key)
            ready = a._endpoints.ready_ids(key)
            running.add_metric([name], len(ready))
            maximum.add_metric([name], intent.max_replicas)
            for rid in ready:
                figures = a._figures(rid, intent, usage, engines)
                for attribute, family in per_replica.items():
                    value = getattr(figures, attribute)
                    if value is not None:
                        family.add_metric([name, rid], value)
        return [running, maximum, *per_replica.values()]
