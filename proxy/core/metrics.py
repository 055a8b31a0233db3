"""The proxy's Prometheus metrics. Gauges are read from the counters at scrape time, so the
request path pays only for the counters and histograms it updates.

Beside the registry, an optional tap keeps every answered demand request (replica, status code,
duration) per endpoint, and the body bytes those requests carried in and out, until a reader
takes them (`take_answers()`): the control plane's analytics turn them into request counts and
exact latency quantiles, its usage meter into requests and bytes per endpoint. Off until `tap()` is called,
so the proxy alone (`endpointd proxy`) keeps nothing; bounded, so a reader that stops taking costs
at most TAP_LIMIT answers per endpoint (beyond it answers are only counted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .pending import PendingCounter

NO_ENDPOINT = ""  # label for requests that matched no endpoint: unbounded paths must not become labels
NO_REPLICA = ""
CLIENT_CLOSED = "499"  # the client went away before the response was complete (nginx's convention)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
COLD_START_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# Answers kept per endpoint between two takes. The analytics sampler takes every 10 s, so this is
# 10,000 requests/s of one endpoint with every latency kept (a few MB); beyond it only counts.
TAP_LIMIT = 100_000

Answer = tuple[str, str, float | None]  # (replica id or NO_REPLICA, status code, duration_s or None)
# A metric family as data: (name, help, type, unit, samples as (name, labels, value)); what a worker
# sends of its registry, for the main process's /metrics (proxy/workers/).
Family = tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]


@dataclass(slots=True)
class Answers:
    """One endpoint's answered demand requests since the last take."""

    kept: list[Answer] = field(default_factory=list)  # in order, at most TAP_LIMIT
    beyond: dict[tuple[str, str], int] = field(default_factory=dict)  # (replica, code) -> answers past the limit
    bytes_in: int = 0  # request body bytes received from the clients of these answers
    bytes_out: int = 0  # response body bytes passed on to them


class _Gauges(Collector):
    def __init__(self, counter: PendingCounter, held: Callable[[], Mapping[str, int]]):
        self._counter = counter
        self._held = held

    def collect(self) -> list[Metric]:
        # This process's own counts: /metrics adds the workers' own gauges to them (proxy/workers/).
        snap = self._counter.local_snapshot()
        pending = GaugeMetricFamily(
            "endpointd_proxy_pending_requests", "Requests admitted and not yet complete (held + in flight)",
            labels=["endpoint"],
        )
        for key, n in snap.endpoints.items():
            pending.add_metric([key], n)
        in_flight = GaugeMetricFamily(
            "endpointd_proxy_in_flight_requests", "Requests sent to a replica and not yet complete",
            labels=["endpoint", "replica"],
        )
        for key, loads in snap.replicas.items():
            for replica, n in loads.items():
                in_flight.add_metric([key, replica], n)
        held = GaugeMetricFamily(
            "endpointd_proxy_held_requests", "Requests waiting for a replica to become ready",
            labels=["endpoint"],
        )
        for key, n in self._held().items():
            held.add_metric([key], n)
        return [pending, in_flight, held]


# (listener, open connections, connections refused at the cap so far), one per listener
ConnectionStats = Callable[[], list[tuple[str, int, int]]]


class _ConnectionGauges(Collector):
    def __init__(self) -> None:
        self.source: ConnectionStats = list

    def collect(self) -> list[Metric]:
        open_ = GaugeMetricFamily(
            "endpointd_proxy_client_connections", "Open client connections, by listener", labels=["listener"],
        )
        refused = CounterMetricFamily(
            "endpointd_proxy_client_connections_refused",
            "Client connections refused because the listener had max_client_connections open",
            labels=["listener"],
        )
        for listener, n_open, n_refused in self.source():
            open_.add_metric([listener], n_open)
            refused.add_metric([listener], n_refused)
        return [open_, refused]


class ProxyMetrics:
    def __init__(self, counter: PendingCounter, held: Callable[[], Mapping[str, int]]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "endpointd_proxy_requests", "Requests answered, by endpoint, replica and status code",
            ["endpoint", "replica", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "endpointd_proxy_request_duration_seconds", "Time from arrival to the end of the response",
            ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.cold_start_wait = Histogram(
            "endpointd_proxy_cold_start_wait_seconds", "Time a request was held waiting for a ready replica",
            ["endpoint"], buckets=COLD_START_BUCKETS_S, registry=self.registry,
        )
        self.refused = Counter(
            "endpointd_proxy_refused", "Requests the proxy answered itself, by status code and cause",
            ["endpoint", "code", "cause"], registry=self.registry,
        )
        self.rate_limited = Counter(
            "endpointd_rate_limited", "Requests refused with a 429 by a rate limit, by the endpoint's namespace and the "
            "limit (token_rpm, token_concurrent, namespace_rpm, namespace_concurrent)",
            ["namespace", "limit"], registry=self.registry,
        )
        self.registry.register(_Gauges(counter, held))
        self._connections = _ConnectionGauges()
        self.registry.register(self._connections)
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._tap: dict[str, Answers] | None = None  # endpoint key -> answers since the last take
        self.on_answer: Callable[[], None] | None = None  # called after each tapped answer (a worker pushes them)

    def tap(self) -> None:
        """Keep every demand answer per endpoint from now on, for `take_answers()`."""
        if self._tap is None:
            self._tap = {}

    def take_answers(self) -> dict[str, Answers]:
        """The answers kept since the last take, per endpoint key; the tap starts empty again."""
        taken = self._tap or {}
        if self._tap is not None:
            self._tap = {}
        return taken

    def add_answers(self, taken: dict[str, Answers]) -> None:
        """Another process's tapped answers (a worker's), kept as if answered here."""
        tap = self._tap
        if tap is None:
            return
        for endpoint, theirs in taken.items():
            answers = tap.get(endpoint)
            if answers is None:
                answers = tap[endpoint] = Answers()
            room = TAP_LIMIT - len(answers.kept)
            answers.kept.extend(theirs.kept[:max(room, 0)])
            beyond = answers.beyond
            for replica, code, _ in theirs.kept[max(room, 0):]:
                beyond[(replica, code)] = beyond.get((replica, code), 0) + 1
            for k, n in theirs.beyond.items():
                beyond[k] = beyond.get(k, 0) + n
            answers.bytes_in += theirs.bytes_in
            answers.bytes_out += theirs.bytes_out

    @property
    def tapped(self) -> bool:
        return self._tap is not None

    def watch_connections(self, source: ConnectionStats) -> None:
        """Where the connection gauges are read from (the server's listeners, once they listen)."""
        self._connections.source = source

    def transferred(self, endpoint: str, bytes_in: int, bytes_out: int, demand: bool = True) -> None:
        """The body bytes of one admitted request, in and out; kept in the tap beside its answer
        (called just before `answered`, so that a worker's push of the answer carries them)."""
        tap = self._tap
        if tap is None or not demand or not endpoint or not (bytes_in or bytes_out):
            return
        answers = tap.get(endpoint)
        if answers is None:
            answers = tap[endpoint] = Answers()
        answers.bytes_in += bytes_in
        answers.bytes_out += bytes_out

    def answered(
        self, endpoint: str, replica: str, code: str, duration_s: float | None, demand: bool = True
    ) -> None:
        """Count one answered request. Label children are cached: prometheus' labels() takes a
        lock and checks its arguments on every call, which the hot path need not pay.
        `demand=False` (the control plane's own probe) is counted here but kept out of the tap:
        an endpoint's analytics show its callers' requests only."""
        key = (endpoint, replica, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(endpoint, replica, code)
        child.inc()
        tap = self._tap
        if tap is not None and demand and endpoint:
            answers = tap.get(endpoint)
            if answers is None:
                answers = tap[endpoint] = Answers()
            if len(answers.kept) < TAP_LIMIT:
                answers.kept.append((replica, code, duration_s))
            else:
                beyond = answers.beyond
                beyond[(replica, code)] = beyond.get((replica, code), 0) + 1
            if self.on_answer is not None:
                self.on_answer()
        if duration_s is None:  # refused before admission: not a served request's latency
            return
        latency = self._latency_children.get(endpoint)
        if latency is None:
            latency = self._latency_children[endpoint] = self.latency.labels(endpoint)
        latency.observe(duration_s)
