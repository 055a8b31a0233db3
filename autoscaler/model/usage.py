"""Usage and cost, pure: what one replica's hardware is billed by (`Hardware`, `Rates`), the
deltas of counters that start again from zero when a process restarts (`CounterDeltas`), the
cutting of a span of time at the interval grid (`spread`), and a usage query's buckets and answer
(`plan_buckets`, `Report`).

Cost: an operator's rate is a price per hour of one unit of an instance type (`[rates]`,
`nvidia-l4 = 0.8`); a replica of size xN is N units (x4 of nvidia-l4 costs 3.2 an hour). An
instance type without a rate costs nothing and is listed as unpriced, so a missing rate is seen,
never silently billed as zero.

Buckets: a query's range [from, to) is cut into steps from `from`; each usage interval (a row
the meter wrote) counts in the bucket its start falls in, so a bucket is exact when `from` and the
step are multiples of the meter's interval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from autoscaler.model.times import wire_time
from engines.errors import EndpointdError

MAX_BUCKETS = 1000  # per query: a year of 9-hour steps, a day of 90-second ones
MAX_RANGE_S = 3660 * 86_400.0  # ten years: more than any retention
MIN_STEP_S = 1.0
DEFAULT_RANGE_S = 86_400.0  # a query without `from`: the last day
_SIZE = re.compile(r"x([1-9][0-9]{0,5})")


class UsageQueryError(EndpointdError, ValueError):
    """A usage query that cannot be answered as asked; the message says what to change."""

    status = 400


@dataclass(frozen=True, slots=True, order=True)
class Hardware:
    """What a replica runs on, as its endpoint's `compute` says."""

    accelerator: str
    instance_type: str
    instance_size: str

    @property
    def units(self) -> int:
        """How many units of its instance type a replica is: N for xN (1 for a size that is not one)."""
        match = _SIZE.fullmatch(self.instance_size)
        return int(match[1]) if match else 1


@dataclass(frozen=True)
class Rates:
    """Price per hour of one unit of each instance type (`[rates]`); what is not listed is unpriced."""

    per_hour: Mapping[str, float] = field(default_factory=dict)

    def rate(self, instance_type: str) -> float | None:
        return self.per_hour.get(instance_type)

    def cost(self, hardware: Hardware, seconds: float) -> float:
        rate = self.rate(hardware.instance_type)
        return 0.0 if rate is None else seconds / 3600.0 * rate * hardware.units


class CounterDeltas:
    """The growth of counters that only go up, except when their process restarts and they begin
    again from zero: by key (a replica), each reading's delta from the last, never negative.

    A reading below the last is a restart: everything it says was counted since, so the delta is
    the reading itself. A key read for the first time counts from zero (a new replica's counters
    began at its start); a restart of endpointd passes the readings it had kept (`baselines`), so
    what the engine counted while endpointd was down is counted once, at the next reading.
    `reset(key)` says the process is gone (its container stopped): its next counters start at 0."""

    def __init__(self, baselines: Mapping[str, float] | None = None) -> None:
        self._last: dict[str, float] = dict(baselines or {})

    def delta(self, key: str, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            return 0.0
        last = self._last.get(key, 0.0)
        self._last[key] = value
        return value - last if value >= last else value

    def reset(self, key: str) -> None:
        self._last[key] = 0.0

    def forget(self, key: str) -> None:
        self._last.pop(key, None)

    def baselines(self) -> dict[str, float]:
        return dict(self._last)


def interval_start(t: float, interval_s: float) -> float:
    """The start of the interval of the grid (multiples of `interval_s` since 1970) that holds `t`."""
    return math.floor(t / interval_s + 1e-9) * interval_s


def spread(start: float, end: float, interval_s: float) -> list[tuple[float, float]]:
    """[start, end) cut where the interval grid cuts it: (interval start, seconds of it in there),
    in order; nothing when end <= start."""
    cut: list[tuple[float, float]] = []
    t = start
    while t < end:
        first = interval_start(t, interval_s)
        upto = min(end, first + interval_s)  # always past t: first <= t (give or take rounding) < first + interval
        cut.append((first, upto - t))
        t = upto
    return cut


@dataclass(frozen=True)
class Buckets:
    start: float
    end: float
    step: float
    count: int

    def index(self, t: float) -> int | None:
        """The bucket `t` falls in, or None outside [start, end)."""
        if not self.start <= t < self.end:
            return None
        return min(self.count - 1, int((t - self.start) // self.step))

    def bounds(self, i: int) -> tuple[float, float]:
        return self.start + i * self.step, min(self.end, self.start + (i + 1) * self.step)


def plan_buckets(start: float | None, end: float | None, step: float | None, *, now: float,
                 max_buckets: int = MAX_BUCKETS) -> Buckets:
    """The buckets of a query: `to` defaults to now, `from` to a day before `to`, `step` to the
    whole range (one bucket: the totals); UsageQueryError for a query out of bounds."""
    end = now if end is None else end
    start = end - DEFAULT_RANGE_S if start is None else start
    if not end > start:
        raise UsageQueryError(f"`to` ({end:g}) must be later than `from` ({start:g})")
    if end - start > MAX_RANGE_S:
        raise UsageQueryError(f"the range is {end - start:g} s; at most {MAX_RANGE_S:g} s (ten years) may be asked")
    if step is None:
        step = end - start
    elif not MIN_STEP_S <= step <= MAX_RANGE_S:
        raise UsageQueryError(f"`step` must be between {MIN_STEP_S:g} and {MAX_RANGE_S:g} seconds, got {step:g}")
    count = max(1, math.ceil((end - start) / step - 1e-9))
    if count > max_buckets:
        least = math.ceil((end - start) / max_buckets)
        raise UsageQueryError(f"a step of {step:g} s gives {count} buckets over this range, more than {max_buckets}: "
                              f"use a step of at least {least} s")
    return Buckets(start, end, step, count)


# --- what the meter writes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntervalReplicas:
    """Replica-seconds of one endpoint on one hardware in the usage interval starting at `start`."""

    namespace: str
    endpoint: str
    start: float
    hardware: Hardware
    seconds: float


@dataclass(frozen=True, slots=True)
class IntervalTraffic:
    """What one endpoint served in the usage interval starting at `start`; tokens None where no
    engine of it keeps a count."""

    namespace: str
    endpoint: str
    start: float
    requests: int
    bytes_in: int
    bytes_out: int
    tokens_in: float | None
    tokens_out: float | None


@dataclass(frozen=True, slots=True)
class Metered:
    """A replica as the meter last wrote it: whose it is, on what, up to when its replica-seconds
    are written (None while it holds nothing: parked), and its engine's token counters as last
    read (the baselines of the next deltas, across a restart of endpointd)."""

    replica: str
    namespace: str
    endpoint: str
    hardware: Hardware
    counted_to: float | None
    tokens_in: float | None
    tokens_out: float | None


# --- the answer ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """Replica-seconds of one endpoint on one hardware in one bucket."""

    namespace: str
    endpoint: str
    bucket: int
    hardware: Hardware
    seconds: float


@dataclass(frozen=True, slots=True)
class TrafficRow:
    """What one endpoint served in one bucket; tokens None where its engine keeps no count."""

    namespace: str
    endpoint: str
    bucket: int
    requests: int
    bytes_in: int
    bytes_out: int
    tokens_in: float | None
    tokens_out: float | None


def _add(a: float | None, b: float | None) -> float | None:
    return a if b is None else b if a is None else a + b


class Figures:
    """Usage summed over rows: replica-seconds by hardware, requests, bytes and tokens."""

    __slots__ = ("seconds", "requests", "bytes_in", "bytes_out", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.seconds: dict[Hardware, float] = {}
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.tokens_in: float | None = None
        self.tokens_out: float | None = None

    def add_seconds(self, hardware: Hardware, seconds: float) -> None:
        self.seconds[hardware] = self.seconds.get(hardware, 0.0) + seconds

    def add_traffic(self, row: TrafficRow) -> None:
        self.requests += row.requests
        self.bytes_in += row.bytes_in
        self.bytes_out += row.bytes_out
        self.tokens_in = _add(self.tokens_in, row.tokens_in)
        self.tokens_out = _add(self.tokens_out, row.tokens_out)

    def merge(self, other: Figures) -> None:
        for hardware, seconds in other.seconds.items():
            self.add_seconds(hardware, seconds)
        self.requests += other.requests
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.tokens_in = _add(self.tokens_in, other.tokens_in)
        self.tokens_out = _add(self.tokens_out, other.tokens_out)

    def wire(self, rates: Rates) -> dict[str, Any]:
        replicas = [
            {"accelerator": hw.accelerator, "instanceType": hw.instance_type, "instanceSize": hw.instance_size,
             "replicaSeconds": round(seconds, 3), "ratePerHour": rates.rate(hw.instance_type),
             "cost": round(rates.cost(hw, seconds), 6)}
            for hw, seconds in sorted(self.seconds.items())
        ]
        return {
            "replicaSeconds": round(sum(self.seconds.values()), 3),
            "replicas": replicas,
            "requests": self.requests, "bytesIn": self.bytes_in, "bytesOut": self.bytes_out,
            "tokensIn": None if self.tokens_in is None else round(self.tokens_in),
            "tokensOut": None if self.tokens_out is None else round(self.tokens_out),
            "cost": round(sum(rates.cost(hw, s) for hw, s in self.seconds.items()), 6),
        }


def _at(seconds: float) -> str:
    return wire_time(datetime.fromtimestamp(seconds, UTC))


def report(namespace: str, buckets: Buckets, replicas: Iterable[ReplicaRow], traffic: Iterable[TrafficRow],
           rates: Rates) -> dict[str, Any]:
    """The answer of `GET /v2/usage/{ns}`: per endpoint, its buckets that saw any usage (in order)
    and its total; the namespace's total; the instance types used that have no rate."""
    by_endpoint: dict[tuple[str, str], dict[int, Figures]] = {}

    def figures(ns: str, name: str, bucket: int) -> Figures:
        per_bucket = by_endpoint.setdefault((ns, name), {})
        found = per_bucket.get(bucket)
        if found is None:
            found = per_bucket[bucket] = Figures()
        return found

    for row in replicas:
        figures(row.namespace, row.endpoint, row.bucket).add_seconds(row.hardware, row.seconds)
    for t in traffic:
        figures(t.namespace, t.endpoint, t.bucket).add_traffic(t)
    total = Figures()
    endpoints = []
    for (ns, name), per_bucket in sorted(by_endpoint.items()):
        endpoint_total = Figures()
        items = []
        for i, f in sorted(per_bucket.items()):
            endpoint_total.merge(f)
            start, end = buckets.bounds(i)
            items.append({"from": _at(start), "to": _at(end), **f.wire(rates)})
        total.merge(endpoint_total)
        endpoints.append({"namespace": ns, "name": name, "buckets": items, "total": endpoint_total.wire(rates)})
    unpriced = sorted({hw.instance_type for hw in total.seconds if rates.rate(hw.instance_type) is None})
    return {
        "namespace": namespace, "from": _at(buckets.start), "to": _at(buckets.end), "step": buckets.step,
        "buckets": buckets.count, "endpoints": endpoints, "total": total.wire(rates), "unpriced": unpriced,
    }
