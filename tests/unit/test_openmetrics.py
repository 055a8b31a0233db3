"""The per-endpoint OpenMetrics export: what it renders parses with prometheus_client's OpenMetrics
parser, names the reference's metrics, and its quantiles are observed latencies (nearest rank)."""

from __future__ import annotations

import math

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from autoscaler.observe.openmetrics import CONTENT_TYPE, EndpointFigures, ReplicaFigures, exact_quantiles, render


def parsed(figures: EndpointFigures) -> dict:
    text = render(figures).decode()
    assert text.endswith("# EOF\n")
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


FIGURES = EndpointFigures(
    window_s=300.0,
    quantiles={0.5: 0.1, 0.9: 0.4, 0.95: 0.8, 0.99: 1.5},
    latency_count=40,
    latency_sum_s=9.5,
    requests={("r1", "200"): 30, ("r2", "200"): 8, ("r2", "503"): 2, ("", "401"): 1},
    pending=3,
    running_replicas=2,
    replicas={
        "r1": ReplicaFigures(cpu_percent=55.5, memory_bytes=2.5e9, gpu_percent=91.0, gpu_memory_bytes=70e9,
                             queue=4.0, running=8.0, kv_cache=0.75),
        "r2": ReplicaFigures(cpu_percent=12.0, memory_bytes=1.0e9),
    },
)


def test_the_content_type_is_openmetrics_1_0():
    assert CONTENT_TYPE == "application/openmetrics-text; version=1.0.0; charset=utf-8"


def test_every_reference_metric_is_rendered_and_parses():
    families = parsed(FIGURES)
    assert {name: f.type for name, f in families.items()} == {
        "latency_distribution": "summary",
        # The reference's export names its samples `http_requests` (no `_total`): OpenMetrics allows
        # that name only on an untyped family (a counter's samples must end in `_total`).
        "http_requests": "unknown",
        "cpu_usage_percent": "gauge",
        "memory_usage_bytes": "gauge",
        "gpu_usage_percent": "gauge",
        "gpu_memory_usage_bytes": "gauge",
        "pending_requests": "gauge",
        "running_replicas": "gauge",
        "engine_queue_requests": "gauge",
        "engine_running_requests": "gauge",
        "engine_kv_cache_usage_ratio": "gauge",
    }
    assert samples(families["latency_distribution"]) == {
        ("latency_distribution", (("quantile", "0.5"),)): 0.1,
        ("latency_distribution", (("quantile", "0.9"),)): 0.4,
        ("latency_distribution", (("quantile", "0.95"),)): 0.8,
        ("latency_distribution", (("quantile", "0.99"),)): 1.5,
        ("latency_distribution_count", ()): 40,
        ("latency_distribution_sum", ()): 9.5,
    }
    assert samples(families["http_requests"]) == {
        ("http_requests", (("replica_id", "r1"), ("status_code", "200"))): 30,
        ("http_requests", (("replica_id", "r2"), ("status_code", "200"))): 8,
        ("http_requests", (("replica_id", "r2"), ("status_code", "503"))): 2,
        ("http_requests", (("replica_id", ""), ("status_code", "401"))): 1,
    }
    assert samples(families["cpu_usage_percent"]) == {
        ("cpu_usage_percent", (("replica_id", "r1"),)): 55.5, ("cpu_usage_percent", (("replica_id", "r2"),)): 12.0}
    # GPU and engine figures only for the replica that has them
    assert samples(families["gpu_memory_usage_bytes"]) == {("gpu_memory_usage_bytes", (("replica_id", "r1"),)): 70e9}
    assert samples(families["engine_kv_cache_usage_ratio"]) == {("engine_kv_cache_usage_ratio", (("replica_id", "r1"),)): 0.75}
    assert samples(families["pending_requests"]) == {("pending_requests", ()): 3}
    assert samples(families["running_replicas"]) == {("running_replicas", ()): 2}


def test_an_endpoint_without_gpus_engine_metrics_or_requests_still_parses():
    figures = EndpointFigures(300.0, exact_quantiles([]), 0, 0.0, {}, 0, 0,
                              {"r1": ReplicaFigures(cpu_percent=1.0, memory_bytes=1.0)})
    families = parsed(figures)
    assert set(families) == {"latency_distribution", "http_requests", "cpu_usage_percent", "memory_usage_bytes",
                             "pending_requests", "running_replicas"}  # no GPU, no engine family
    quantiles = [s.value for s in families["latency_distribution"].samples if "quantile" in s.labels]
    assert len(quantiles) == 4 and all(math.isnan(v) for v in quantiles)  # no request in the window


def test_the_request_counter_lines_read_as_the_references_export():
    """The reference's documented export (docs/reference-excerpts.md, "Query metrics manually"):
    `# HELP http_requests …` and samples `http_requests{replica_id="…",status_code="200"} N`."""
    lines = render(FIGURES).decode().splitlines()
    assert 'http_requests{replica_id="r1",status_code="200"} 30.0' in lines
    assert [line.split(" ")[2] for line in lines if line.startswith("# HELP http_requests")] == ["http_requests"]
    assert not any(line.startswith("http_requests_total") for line in lines)


def test_the_help_says_over_what_window_the_quantiles_are():
    assert "in the last 300 s" in render(FIGURES).decode().splitlines()[0]


@pytest.mark.parametrize("latencies, expected", [
    # nearest rank: the ceil(q·n)-th smallest, always a latency that was observed
    ([0.2], {0.5: 0.2, 0.9: 0.2, 0.95: 0.2, 0.99: 0.2}),
    ([0.4, 0.1, 0.3, 0.2], {0.5: 0.2, 0.9: 0.4, 0.95: 0.4, 0.99: 0.4}),
    ([i / 100 for i in range(100, 0, -1)], {0.5: 0.5, 0.9: 0.9, 0.95: 0.95, 0.99: 0.99}),  # 1..100 hundredths
    ([1.0] * 98 + [5.0, 9.0], {0.5: 1.0, 0.9: 1.0, 0.95: 1.0, 0.99: 5.0}),
    ([], {0.5: None, 0.9: None, 0.95: None, 0.99: None}),
])
def test_quantiles_are_observed_latencies(latencies, expected):
    assert exact_quantiles(list(latencies)) == expected
