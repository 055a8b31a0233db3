"""An endpoint's analytics as time series: what one sampler round saw (`Sample`), mergeable sums
of rounds (`Aggregate`), the in-memory ring of the last day, and the re-bucketing of either
resolution into a query's steps, rendered as the JSON the dashboard reads. Pure: no I/O, no clock.

Latency quantiles come from a log-bucketed sketch (DDSketch's mapping, relative accuracy 2%):
every latency observed lands in the bucket (γ^(i-1), γ^i], γ = 1.02/0.98, and a quantile is read
as the bucket's centre, so it is within 2% of a latency that was really observed. Sketches merge
exactly, which is why they are kept instead of per-sample quantiles: the p99 of a 5-minute step
is the p99 of those 5 minutes' requests, never an average of thirty 10-second p99s.

Gauges (pending, replicas, usage, engine signals) merge as means over the samples that had a
value; counts merge as sums. A step with no sample at all is null everywhere (endpointd was not
running, or the endpoint did not exist); a sampled step without requests counts 0 and has null
latencies and shares.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

RELATIVE_ACCURACY = 0.02
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(GAMMA)
# Below a microsecond every latency is the same: an answer from the proxy itself.
MIN_LATENCY_S = 1e-6
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))

CLASSES = ("2xx", "4xx", "5xx")  # the reference's status classes; 1xx and 3xx are only in the total
COUNTS = ("total", *CLASSES)
# Endpoint-wide gauges. Usage and the KV cache are means over the replicas that reported one;
# the engine queue and running counts are sums (requests waiting anywhere in the endpoint).
GAUGES = (
    "pending_requests", "running_replicas", "max_replicas",
    "cpu_usage_percent", "memory_usage_bytes", "gpu_usage_percent", "gpu_memory_usage_bytes",
    "engine_queue", "engine_running", "engine_kv_cache_usage",
)
REPLICA_GAUGES = (
    "cpu_usage_percent", "memory_usage_bytes", "gpu_usage_percent", "gpu_memory_usage_bytes",
    "engine_queue", "engine_running", "engine_kv_cache_usage",
)
SUMMED = frozenset({"engine_queue", "engine_running"})  # endpoint-wide: summed over replicas, not averaged
_MISSING = math.nan


def status_class(code: str) -> int | None:
    """Index into CLASSES of a status code ("200" -> 0, "499" -> 1), None for 1xx and 3xx."""
    first = code[:1]
    return 0 if first == "2" else 1 if first == "4" else 2 if first == "5" else None


# --- latency sketch ---------------------------------------------------------------------------


def bucket_of(latency_s: float) -> int:
    return math.ceil(math.log(max(latency_s, MIN_LATENCY_S)) / _LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The centre of a bucket: within RELATIVE_ACCURACY of every latency in it."""
    return 2 * GAMMA ** index / (GAMMA + 1)


class Sketch:
    """Latencies as counts per log bucket. Mergeable; quantiles within 2% of an observed value."""

    __slots__ = ("bins", "count")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0

    def add(self, latency_s: float, times: int = 1) -> None:
        index = bucket_of(latency_s)
        self.bins[index] = self.bins.get(index, 0) + times
        self.count += times

    def merge_packed(self, packed: Sequence[int]) -> None:
        bins = self.bins
        for i in range(0, len(packed), 2):
            index, n = packed[i], packed[i + 1]
            bins[index] = bins.get(index, 0) + n
            self.count += n

    def merge(self, other: Sketch) -> None:
        for index, n in other.bins.items():
            self.bins[index] = self.bins.get(index, 0) + n
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """DDSketch's rank rule: the first bucket whose cumulative count exceeds q·(n-1)."""
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen > rank:
                return bucket_value(index)
        return bucket_value(max(self.bins))

    def pack(self) -> array:
        """Compact form for the ring: [index, count, index, count, ...] in index order."""
        packed = array("q")
        for index in sorted(self.bins):
            packed.append(index)
            packed.append(self.bins[index])
        return packed

    def to_json(self) -> list[list[int]]:
        return [[index, self.bins[index]] for index in sorted(self.bins)]

    @classmethod
    def from_json(cls, pairs: Iterable[Sequence[int]]) -> Sketch:
        sketch = cls()
        for index, n in pairs:
            sketch.bins[int(index)] = sketch.bins.get(int(index), 0) + int(n)
            sketch.count += int(n)
        return sketch


# --- one sampler round -------------------------------------------------------------------------


class Sample:
    """What one sampler round saw of one endpoint, compactly (the ring holds a day of them):
    requests answered since the round before (COUNTS), their latencies (a packed sketch), the
    gauges at the round (GAUGES, NaN where unknown) and each ready replica's (REPLICA_GAUGES)."""

    __slots__ = ("t", "counts", "latency", "gauges", "replicas")

    def __init__(
        self,
        t: float,
        counts: Sequence[int],
        latency: Sketch | None,
        gauges: Mapping[str, float | None],
        replicas: Mapping[str, Mapping[str, float | None]] | None = None,
    ) -> None:
        self.t = t  # the start of its bucket, unix seconds
        self.counts = tuple(counts)
        self.latency = latency.pack() if latency is not None and latency.count else None
        self.gauges = _row(gauges, GAUGES)
        self.replicas = tuple((rid, _row(values, REPLICA_GAUGES)) for rid, values in sorted((replicas or {}).items()))

    def gauge(self, name: str) -> float | None:
        value = self.gauges[GAUGES.index(name)]
        return None if math.isnan(value) else value

    def replica_gauge(self, replica: str, name: str) -> float | None:
        for rid, row in self.replicas:
            if rid == replica:
                value = row[REPLICA_GAUGES.index(name)]
                return None if math.isnan(value) else value
        return None

    def absorb(self, newer: Sample) -> Sample:
        """Two rounds that fell in one bucket (a late round): counts and latencies of both, the
        newer round's gauges."""
        sketch = Sketch()
        for part in (self.latency, newer.latency):
            if part is not None:
                sketch.merge_packed(part)
        merged = Sample.__new__(Sample)
        merged.t = self.t
        merged.counts = tuple(a + b for a, b in zip(self.counts, newer.counts, strict=True))
        merged.latency = sketch.pack() if sketch.count else None
        merged.gauges = newer.gauges
        merged.replicas = newer.replicas
        return merged


def _row(values: Mapping[str, float | None], names: Sequence[str]) -> array:
    return array("d", (_MISSING if (value := values.get(name)) is None else float(value) for name in names))


# --- sums of rounds ----------------------------------------------------------------------------


class Aggregate:
    """Samples merged: counts summed, sketches merged, gauges as (sum, n) for their means. What a
    5-minute history row holds and what each step of a query is."""

    __slots__ = ("samples", "counts", "sketch", "sums", "ns", "replicas")

    def __init__(self) -> None:
        self.samples = 0
        self.counts = [0] * len(COUNTS)
        self.sketch = Sketch()
        self.sums = [0.0] * len(GAUGES)
        self.ns = [0] * len(GAUGES)
        self.replicas: dict[str, tuple[list[float], list[int]]] = {}

    def add(self, sample: Sample) -> None:
        self.samples += 1
        for i, n in enumerate(sample.counts):
            self.counts[i] += n
        if sample.latency is not None:
            self.sketch.merge_packed(sample.latency)
        _add_row(self.sums, self.ns, sample.gauges)
        for rid, row in sample.replicas:
            sums, ns = self.replicas.setdefault(rid, ([0.0] * len(REPLICA_GAUGES), [0] * len(REPLICA_GAUGES)))
            _add_row(sums, ns, row)

    def merge(self, other: Aggregate) -> None:
        self.samples += other.samples
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sketch.merge(other.sketch)
        for i in range(len(GAUGES)):
            self.sums[i] += other.sums[i]
            self.ns[i] += other.ns[i]
        for rid, (other_sums, other_ns) in other.replicas.items():
            sums, ns = self.replicas.setdefault(rid, ([0.0] * len(REPLICA_GAUGES), [0] * len(REPLICA_GAUGES)))
            for i in range(len(REPLICA_GAUGES)):
                sums[i] += other_sums[i]
                ns[i] += other_ns[i]

    def gauge(self, name: str) -> float | None:
        i = GAUGES.index(name)
        return self.sums[i] / self.ns[i] if self.ns[i] else None

    def replica_gauge(self, replica: str, name: str) -> float | None:
        found = self.replicas.get(replica)
        if found is None:
            return None
        i = REPLICA_GAUGES.index(name)
        return found[0][i] / found[1][i] if found[1][i] else None

    def to_json(self) -> dict[str, Any]:
        """The history row's form: short keys, gauges by name (a new gauge reads as missing in old rows)."""
        return {
            "n": self.samples,
            "c": dict(zip(COUNTS, self.counts, strict=True)),
            "l": self.sketch.to_json(),
            "g": {name: [self.sums[i], self.ns[i]] for i, name in enumerate(GAUGES) if self.ns[i]},
            "r": {rid: {name: [sums[i], ns[i]] for i, name in enumerate(REPLICA_GAUGES) if ns[i]}
                  for rid, (sums, ns) in self.replicas.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Aggregate:
        agg = cls()
        agg.samples = int(data.get("n", 0))
        counts = data.get("c", {})
        agg.counts = [int(counts.get(name, 0)) for name in COUNTS]
        agg.sketch = Sketch.from_json(data.get("l", ()))
        for name, (total, n) in data.get("g", {}).items():
            if name in GAUGES:
                i = GAUGES.index(name)
                agg.sums[i], agg.ns[i] = float(total), int(n)
        for rid, values in data.get("r", {}).items():
            sums, ns = [0.0] * len(REPLICA_GAUGES), [0] * len(REPLICA_GAUGES)
            for name, (total, n) in values.items():
                if name in REPLICA_GAUGES:
                    i = REPLICA_GAUGES.index(name)
                    sums[i], ns[i] = float(total), int(n)
            agg.replicas[rid] = (sums, ns)
        return agg


def _add_row(sums: list[float], ns: list[int], row: Sequence[float]) -> None:
    for i, value in enumerate(row):
        if not math.isnan(value):
            sums[i] += value
            ns[i] += 1


def aggregate(samples: Iterable[Sample]) -> Aggregate | None:
    agg = None
    for sample in samples:
        if agg is None:
            agg = Aggregate()
        agg.add(sample)
    return agg


# --- the last day in memory --------------------------------------------------------------------


class Ring:
    """A fixed number of buckets of `resolution_s` each; a new bucket overwrites the one a full
    turn older. Bucket k starts at k·resolution_s (unix seconds)."""

    def __init__(self, resolution_s: float, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a ring needs at least one slot, got {slots}")
        self.resolution_s = resolution_s
        self._slots: list[Sample | None] = [None] * slots
        self._newest: int | None = None  # bucket index of the newest sample

    def bucket(self, t: float) -> int:
        return math.floor(t / self.resolution_s + 1e-9)

    def put(self, sample: Sample) -> None:
        index = self.bucket(sample.t)
        slot = index % len(self._slots)
        held = self._slots[slot]
        if held is not None and self.bucket(held.t) == index:
            sample = held.absorb(sample)
        self._slots[slot] = sample
        self._newest = index if self._newest is None else max(self._newest, index)

    def between(self, start: float, end: float) -> Iterator[Sample]:
        """Samples with start <= t < end, oldest first (only those still held)."""
        if self._newest is None:
            return
        oldest = self._newest - len(self._slots) + 1
        first = oldest if start == -math.inf else max(self.bucket(start), oldest)
        last = self._newest if end == math.inf else min(math.ceil(end / self.resolution_s - 1e-9) - 1, self._newest)
        for index in range(first, last + 1):
            sample = self._slots[index % len(self._slots)]
            if sample is not None and self.bucket(sample.t) == index and start <= sample.t < end:
                yield sample

    def __len__(self) -> int:
        return sum(1 for s in self._slots if s is not None)


# --- a query's steps ----------------------------------------------------------------------------


def rebucket(points: Iterable[tuple[float, Sample | Aggregate]], start: float, step: float, count: int) -> list[Aggregate | None]:
    """Merge points (each at its bucket's start time) into `count` steps [start + k·step, +step)."""
    steps: list[Aggregate | None] = [None] * count
    for t, point in points:
        k = math.floor((t - start) / step + 1e-9)
        if not 0 <= k < count:
            continue
        agg = steps[k]
        if agg is None:
            agg = steps[k] = Aggregate()
        if isinstance(point, Sample):
            agg.add(point)
        else:
            agg.merge(point)
    return steps


def render(start: float, end: float, step: float, resolution: float, steps: Sequence[Aggregate | None]) -> dict[str, Any]:
    """The series JSON: one array per figure, aligned with `timestamps`, null where unknown."""
    replicas = sorted({rid for agg in steps if agg is not None for rid in agg.replicas})

    def counts(i: int) -> list[int | None]:
        return [None if agg is None else agg.counts[i] for agg in steps]

    def share(i: int) -> list[float | None]:
        return [None if agg is None or not agg.counts[0] else agg.counts[i] / agg.counts[0] for agg in steps]

    def latency(q: float) -> list[float | None]:
        return [None if agg is None else agg.sketch.quantile(q) for agg in steps]

    def gauge(name: str) -> list[float | None]:
        return [None if agg is None else agg.gauge(name) for agg in steps]

    def replica_gauge(rid: str, name: str) -> list[float | None]:
        return [None if agg is None else agg.replica_gauge(rid, name) for agg in steps]

    return {
        "from": _number(start),
        "to": _number(end),
        "step": _number(step),
        "resolution": _number(resolution),
        "timestamps": [_number(start + k * step) for k in range(len(steps))],
        "series": {
            "requests": {name: counts(i) for i, name in enumerate(COUNTS)},
            "requests_share": {name: share(i + 1) for i, name in enumerate(CLASSES)},
            "latency_seconds": {label: latency(q) for label, q in QUANTILES},
            **{name: gauge(name) for name in GAUGES},
        },
        "replicas": {rid: {name: replica_gauge(rid, name) for name in REPLICA_GAUGES} for rid in replicas},
    }


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 6)
