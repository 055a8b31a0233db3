"""One endpoint's metrics in OpenMetrics text, as the reference service's export names them:

    latency_distribution{quantile}   summary: quantiles 0.5, 0.9, 0.95, 0.99 of the latencies of
                                     the requests answered in the last window (5 minutes by
                                     default), exact (the observed latencies sorted, nearest
                                     rank); _count and _sum since the endpoint was created or
                                     endpointd started, whichever is later
    http_requests{replica_id,status_code}   requests answered, same origin; named as the
                                     reference's export names it (`http_requests`, no `_total`),
                                     which OpenMetrics allows only untyped (`unknown`): a
                                     counter's samples must end in `_total`
    cpu_usage_percent, memory_usage_bytes{replica_id}            gauges, last sample
    gpu_usage_percent, gpu_memory_usage_bytes{replica_id}        only where GPUs are assigned
    pending_requests, running_replicas                           gauges, now
    engine_queue_requests, engine_running_requests,
    engine_kv_cache_usage_ratio{replica_id}                      where the engine exports them

Rendered by prometheus_client's OpenMetrics exposition (escaping, `# EOF`). Pure: it renders
what it is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

CONTENT_TYPE = CONTENT_TYPE_LATEST  # application/openmetrics-text; version=1.0.0; charset=utf-8
SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class ReplicaFigures:
    """One replica's latest readings; None where not known (no sample yet, no GPU, no engine metric)."""

    cpu_percent: float | None = None  # of the replica's CPU limit
    memory_bytes: float | None = None
    gpu_percent: float | None = None  # mean over its GPUs
    gpu_memory_bytes: float | None = None  # summed over its GPUs
    queue: float | None = None
    running: float | None = None
    kv_cache: float | None = None  # 0..1


@dataclass(frozen=True)
class EndpointFigures:
    window_s: float
    quantiles: Mapping[float, float | None]  # q -> seconds over the window; None: no request in it
    latency_count: int
    latency_sum_s: float
    requests: Mapping[tuple[str, str], int]  # (replica id, status code) -> answered
    pending: int
    running_replicas: int
    replicas: Mapping[str, ReplicaFigures] = field(default_factory=dict)


def exact_quantiles(latencies: list[float], qs: tuple[float, ...] = SUMMARY_QUANTILES) -> dict[float, float | None]:
    """Nearest-rank quantiles: each one is a latency that was observed (sorts `latencies` in place)."""
    if not latencies:
        return {q: None for q in qs}
    latencies.sort()
    n = len(latencies)
    # rank ceil(q·n), 1-based; the epsilon keeps 0.99·100 at 99 despite binary floating point
    return {q: latencies[min(n - 1, max(0, math.ceil(q * n - 1e-9) - 1))] for q in qs}


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self):
        return self._families


def families(figures: EndpointFigures) -> list[Metric]:
    window = f"{figures.window_s:g}"
    summary = Metric(
        "latency_distribution",
        f"Request latency in seconds: quantiles over the requests answered in the last {window} s (exact), "
        "count and sum since the endpoint was created or endpointd started",
        "summary",
    )
    for q in SUMMARY_QUANTILES:
        value = figures.quantiles.get(q)
        summary.add_sample("latency_distribution", {"quantile": f"{q:g}"}, float("nan") if value is None else value)
    summary.add_sample("latency_distribution_count", {}, figures.latency_count)
    summary.add_sample("latency_distribution_sum", {}, figures.latency_sum_s)
    requests = Metric(
        "http_requests", "Requests answered (a count that only grows), by replica (empty: answered before one was "
        "chosen) and status code", "unknown",
    )
    for (replica, code), n in sorted(figures.requests.items()):
        requests.add_sample("http_requests", {"replica_id": replica, "status_code": code}, n)
    out: list[Metric] = [summary, requests]

    def per_replica(name: str, about: str, attribute: str, always: bool = True) -> None:
        gauge = GaugeMetricFamily(name, about, labels=["replica_id"])
        for rid, replica in sorted(figures.replicas.items()):
            value = getattr(replica, attribute)
            if value is not None:
                gauge.add_metric([rid], value)
        if always or gauge.samples:
            out.append(gauge)

    per_replica("cpu_usage_percent", "CPU use of each replica, in percent of its CPU limit", "cpu_percent")
    per_replica("memory_usage_bytes", "Memory use of each replica (without page cache)", "memory_bytes")
    per_replica("gpu_usage_percent", "GPU utilization of each replica, mean over its GPUs", "gpu_percent", always=False)
    per_replica("gpu_memory_usage_bytes", "GPU memory in use on each replica's GPUs", "gpu_memory_bytes", always=False)
    pending = GaugeMetricFamily("pending_requests", "Requests admitted and not yet complete (held + in flight)")
    pending.add_metric([], figures.pending)
    running = GaugeMetricFamily("running_replicas", "Replicas ready and taking requests")
    running.add_metric([], figures.running_replicas)
    out += [pending, running]
    per_replica("engine_queue_requests", "Requests waiting in each replica's engine (its own /metrics)", "queue", always=False)
    per_replica("engine_running_requests", "Requests each replica's engine is working on", "running", always=False)
    per_replica("engine_kv_cache_usage_ratio", "How full each replica's engine KV cache is, 0 to 1", "kv_cache", always=False)
    return out


def render(figures: EndpointFigures) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(figures)))
    return generate_latest(registry)
