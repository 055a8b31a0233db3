"""The usage meter: what each endpoint used, written to the store one usage interval at a time.

Every sample (each second, four per interval when the interval is shorter) it reads:
- the controller's replicas that hold resources (`holding()`: every phase but parked) and adds the
  time since the last sample to their endpoint's replica-seconds, by hardware;
- the requests and body bytes each endpoint served (the analytics' counters over the proxy's tap,
  `traffic()`) and the token counters each replica's engine keeps (the engine scrape's latest
  readings), as deltas that never go negative (model/usage.py CounterDeltas).
When the wall clock crosses into the next interval (multiples of `usage_interval_s` since 1970),
the interval that closed is written in one transaction, with what the meter keeps of each
replica: up to when its replica-seconds are written, and its engine's counters as last read.

A kill -9 loses at most what was counted since the last write: requests, bytes and tokens of the
interval that was open. Not replica-seconds: at its first sample a new start adds, for each
replica it adopted holding resources, the time from where the meter had written it to now — the
replica held its resources all along; a replica that did not survive the stop is not counted for
it. Token counters kept from before the stop make the engines' counts while endpointd was down
count once, at their next reading. A clean stop (`close`) writes the open interval's part.

Time: the wall clock places intervals (compared across restarts); the monotonic clock measures
the seconds between samples.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from autoscaler.model.intent import Intent
from autoscaler.model.usage import (
    CounterDeltas,
    Hardware,
    IntervalReplicas,
    IntervalTraffic,
    Metered,
    Rates,
    ReplicaRow,
    TrafficRow,
    interval_start,
    plan_buckets,
    report,
    spread,
)
from autoscaler.observe.engine_metrics import Scraped
from autoscaler.observe.loops import Loops
from autoscaler.store.store import Store
from engines.runtime import EndpointKey
from proxy.core.config import setting

log = logging.getLogger("endpointd.usage")

SAMPLE_S = 1.0  # replica-seconds are summed from samples this far apart (closer for a short interval)
SAMPLES_PER_INTERVAL = 4
# A replica the controller no longer holds (stopped, removed) is forgotten after this long; a
# restart may take a while to adopt what runs, and must find what was kept of it.
FORGET_AFTER_S = 3600.0
WHAT = ("requests", "in", "out")  # the analytics' counters of an endpoint, as keyed in CounterDeltas


@dataclass(frozen=True)
class UsageConfig:
    """The `[usage]` section; each key also as ENDPOINTD_<KEY> and --<key>."""

    usage_interval_s: float = setting(
        # A minute: what the reference bills by, and a kill -9 loses at most a minute of requests.
        60.0, min=1.0, max=3600.0,
        help="usage is written to the store once per interval; a crash loses at most the requests, bytes and "
             "tokens of the interval that was open",
    )
    usage_keep_days: float = setting(
        # Over a year: a year's bills can be checked against it.
        400.0, min=1.0, max=3660.0, help="how long usage is kept in the store",
    )

    @property
    def sample_s(self) -> float:
        return min(SAMPLE_S, self.usage_interval_s / SAMPLES_PER_INTERVAL)


class Holders(Protocol):
    """The controller: each endpoint's intent, its replicas holding resources, its parked ones."""

    def holding(self) -> list[tuple[Intent, list[str], list[str]]]: ...


class Traffic(Protocol):
    """The analytics: what each endpoint served since this process started, and the engines' readings."""

    def traffic(self) -> dict[str, tuple[EndpointKey, int, int, int]]: ...
    def engine_readings(self) -> Mapping[str, Scraped]: ...


@dataclass
class _Replica:
    key: EndpointKey
    hardware: Hardware
    holding: bool
    seen_at: float  # wall


class _Served:
    """One endpoint's traffic in the open interval."""

    __slots__ = ("requests", "bytes_in", "bytes_out", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.requests = self.bytes_in = self.bytes_out = 0
        self.tokens_in: float | None = None
        self.tokens_out: float | None = None

    def any(self) -> bool:
        return bool(self.requests or self.bytes_in or self.bytes_out) or self.tokens_in is not None \
            or self.tokens_out is not None


class UsageMeter:
    def __init__(
        self,
        config: UsageConfig,
        store: Store,
        *,
        holders: Holders,
        traffic: Traffic,
        hardware_of: Callable[[Intent], Hardware],
        rates: Rates,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._store = store
        self._holders = holders
        self._traffic = traffic
        self._hardware_of = hardware_of
        self.rates = rates
        self._wall = wall
        self._clock = clock
        self._sleep = sleep
        self._replicas: dict[str, _Replica] = {}
        self._kept: dict[str, Metered] = {}  # what the store had at start, until the first sample
        self._served = CounterDeltas()  # "<uid> <what>" -> the analytics' counters
        self._uids: set[str] = set()
        self._tokens_in = CounterDeltas()  # replica id -> its engine's counters
        self._tokens_out = CounterDeltas()
        self._open: float | None = None  # start of the open interval
        self._seconds: dict[tuple[EndpointKey, Hardware], float] = {}
        self._open_traffic: dict[EndpointKey, _Served] = {}
        self._unwritten: tuple[list[IntervalReplicas], list[IntervalTraffic]] = ([], [])
        self._last_mono: float | None = None
        self._task: asyncio.Task[None] | None = None
        # Held by a write and by a report's two reads (the store, the open interval), so that a
        # report never sees an interval both written and still open, nor in neither.
        self._lock = asyncio.Lock()

    # --- lifetime ----------------------------------------------------------------------------

    async def load(self) -> None:
        """What the meter kept of each replica before this start: their token baselines, and up
        to when their replica-seconds are written (the first sample credits the rest)."""
        kept = await self._store.metered()
        self._kept = {m.replica: m for m in kept}
        self._tokens_in = CounterDeltas({m.replica: m.tokens_in for m in kept if m.tokens_in is not None})
        self._tokens_out = CounterDeltas({m.replica: m.tokens_out for m in kept if m.tokens_out is not None})

    async def start(self, loops: Loops) -> None:
        """Load, then sample under `loops` (call it once the controller has adopted what runs)."""
        await self.load()
        self._task = loops.start("usage meter", self.run)

    async def close(self) -> None:
        """Stop sampling and write what the open interval has so far (a restart adds to it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            if self._last_mono is not None:
                now = self._wall()
                self.sample(now, self._clock())
                await self._write(now, close_open=True)
        except Exception:  # noqa: BLE001 - the store may be gone first at a failed start: lose one interval
            log.exception("could not write the open usage interval at shutdown")

    async def run(self) -> None:
        while True:
            await self.tick()
            await self._sleep(self.config.sample_s)

    # --- sampling ----------------------------------------------------------------------------

    async def tick(self) -> None:
        """One sample; the interval it closed (if any) written."""
        now = self._wall()
        gap = self.sample(now, self._clock())
        if gap is not None:
            self._unwritten[0].extend(gap)
        start = interval_start(now, self.config.usage_interval_s)
        if self._open is None:
            self._open = start
        if gap or start > self._open:
            await self._write(now, close_open=start > self._open)
            self._open = start

    def sample(self, now: float, mono: float) -> list[IntervalReplicas] | None:
        """Count what was used since the last sample (`now` wall, `mono` monotonic). At the first
        sample of this process, the replica-seconds of the replicas it found holding resources
        since the meter last wrote them (returned, by interval, to be written at once)."""
        first = self._last_mono is None
        elapsed = 0.0 if first else max(0.0, mono - self._last_mono)  # type: ignore[operator]
        self._last_mono = mono
        gap: list[IntervalReplicas] | None = [] if first else None
        for replica in self._replicas.values():
            replica.holding = False  # unless seen holding below: gone, or parked
        for intent, holding, parked in self._holders.holding():
            hardware = self._hardware_of(intent)
            for rid in holding:
                kept = self._kept.get(rid)
                if gap is not None and kept is not None and kept.counted_to is not None:
                    gap.extend(IntervalReplicas(kept.namespace, kept.endpoint, at, kept.hardware, s)
                               for at, s in spread(kept.counted_to, now, self.config.usage_interval_s))
                self._replicas[rid] = _Replica(intent.key, hardware, True, now)
                if elapsed:
                    slot = (intent.key, hardware)
                    self._seconds[slot] = self._seconds.get(slot, 0.0) + elapsed
            for rid in parked:
                self._replicas[rid] = _Replica(intent.key, hardware, False, now)
                self._tokens_in.reset(rid)  # its container stopped: its engine counts from 0 again
                self._tokens_out.reset(rid)
        if first:
            for rid, kept in self._kept.items():  # not seen again yet: kept until forgotten
                if rid not in self._replicas:
                    self._replicas[rid] = _Replica(EndpointKey(kept.namespace, kept.endpoint), kept.hardware, False, now)
            self._kept = {}
        self._count_traffic()
        return gap

    def _count_traffic(self) -> None:
        served_now = self._traffic.traffic()
        for uid in self._uids - set(served_now):  # deleted: its counters go with it
            for what in WHAT:
                self._served.forget(f"{uid} {what}")
        self._uids = set(served_now)
        for uid, (key, requests, bytes_in, bytes_out) in served_now.items():
            served = self._served_of(key)
            served.requests += round(self._served.delta(f"{uid} requests", requests))
            served.bytes_in += round(self._served.delta(f"{uid} in", bytes_in))
            served.bytes_out += round(self._served.delta(f"{uid} out", bytes_out))
        for rid, scraped in self._traffic.engine_readings().items():
            counted = scraped.counters
            if counted.tokens_in is not None:
                served = self._served_of(scraped.key)
                served.tokens_in = (served.tokens_in or 0.0) + self._tokens_in.delta(rid, counted.tokens_in)
            if counted.tokens_out is not None:
                served = self._served_of(scraped.key)
                served.tokens_out = (served.tokens_out or 0.0) + self._tokens_out.delta(rid, counted.tokens_out)

    def _served_of(self, key: EndpointKey) -> _Served:
        served = self._open_traffic.get(key)
        if served is None:
            served = self._open_traffic[key] = _Served()
        return served

    # --- reading and writing -------------------------------------------------------------------

    def open_rows(self) -> tuple[list[IntervalReplicas], list[IntervalTraffic]]:
        """The open interval as counted so far (not yet in the store), and what failed to be written."""
        replicas, traffic = list(self._unwritten[0]), list(self._unwritten[1])
        if self._open is not None:
            replicas += [IntervalReplicas(key.namespace, key.name, self._open, hw, s)
                         for (key, hw), s in self._seconds.items() if s > 0]
            traffic += [IntervalTraffic(key.namespace, key.name, self._open, t.requests, t.bytes_in, t.bytes_out,
                                        t.tokens_in, t.tokens_out)
                        for key, t in self._open_traffic.items() if t.any()]
        return replicas, traffic

    async def report(self, namespace: str, start: float | None, end: float | None, step: float | None) -> dict[str, Any]:
        """`GET /v2/usage/{ns}`: the usage of a namespace (`*`: every one) over [start, end) in
        buckets of `step` (model/usage.py plan_buckets, report), from the store and the open
        interval; UsageQueryError for a query out of bounds."""
        buckets = plan_buckets(start, end, step, now=self._wall())
        ns = None if namespace == "*" else namespace
        async with self._lock:
            replicas, traffic = await self._store.usage(ns, buckets)
            open_replicas, open_traffic = self.open_rows()
        for r in open_replicas:
            i = buckets.index(r.start)
            if i is not None and ns in (None, r.namespace):
                replicas.append(ReplicaRow(r.namespace, r.endpoint, i, r.hardware, r.seconds))
        for t in open_traffic:
            i = buckets.index(t.start)
            if i is not None and ns in (None, t.namespace):
                traffic.append(TrafficRow(t.namespace, t.endpoint, i, t.requests, t.bytes_in, t.bytes_out,
                                          t.tokens_in, t.tokens_out))
        return report(namespace, buckets, replicas, traffic, self.rates)

    async def _write(self, now: float, *, close_open: bool) -> None:
        async with self._lock:
            await self._write_locked(now, close_open)

    async def _write_locked(self, now: float, close_open: bool) -> None:
        if close_open:
            replicas, traffic = self.open_rows()
            self._seconds, self._open_traffic = {}, {}
        else:
            replicas, traffic = list(self._unwritten[0]), list(self._unwritten[1])
        self._unwritten = (replicas, traffic)  # until written: a failed write is tried again with the next
        forget = [rid for rid, r in self._replicas.items() if now - r.seen_at > FORGET_AFTER_S]
        for rid in forget:
            del self._replicas[rid]
            self._tokens_in.forget(rid)
            self._tokens_out.forget(rid)
        tokens_in, tokens_out = self._tokens_in.baselines(), self._tokens_out.baselines()
        metered = [
            Metered(rid, r.key.namespace, r.key.name, r.hardware, now if r.holding else None,
                    tokens_in.get(rid), tokens_out.get(rid))
            for rid, r in self._replicas.items()
        ]
        await self._store.write_usage(replicas, traffic, metered, forget,
                                      before=now - self.config.usage_keep_days * 86_400)
        self._unwritten = ([], [])
