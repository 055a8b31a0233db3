"""The metrics routes end to end: `endpointd serve` on the real Docker engine with the echo engine,
the sampler shortened through its ENDPOINTD_ANALYTICS_* variables. The OpenMetrics export parses
with prometheus_client's OpenMetrics parser and counts exactly the requests sent; the analytics
series count them within one step; the engine's own gauges and the replica's usage reach the
export and the main /metrics, beside the failures of serve's background loops; another
namespace's token gets 403."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import HfApi
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_families

from tests.serve_process import Serve, wait_for

pytestmark = pytest.mark.docker
ECHO = {"url": "endpointd/echo:latest", "healthRoute": "/health", "env": {}}
# Rounds every half second and engines scraped as often, so the test waits seconds, not minutes.
FAST = {"ENDPOINTD_ANALYTICS_INTERVAL_S": "0.5", "ENDPOINTD_ENGINE_SCRAPE_INTERVAL_S": "0.5"}
OPEN_METRICS = "/v2/endpoint/alice/echo/open-metrics"
SERIES = "/v2/endpoint/alice/echo/metrics"
SENT = 7
LOOPS = ("reconcile", "watch deaths", "liveness", "orphan sweep", "scale", "journal", "analytics", "analytics usage",
         "engine metrics", "logs: follow containers", "logs: write", "logs: container deaths", "logs: prune",
         "usage meter")


@pytest.fixture
def serve(tmp_path, docker_engine, monkeypatch):
    s = Serve(tmp_path / "data", admin_token="test-admin-token", extra_env=FAST)
    s.alice = s.add_user("alice", "acme")
    s.bob = s.add_user("bob")
    s.scraper = s.add_user("bob", None, "metrics")
    s.start()
    monkeypatch.setattr(hub_constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{s.url}/v2")
    yield s
    s.close()


def http(serve, method, path, token=None, body=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{serve.url}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type"), error.read()


def running(serve):
    def state():
        status, _, body = http(serve, "GET", "/v2/endpoint/alice/echo", serve.alice)
        return status == 200 and json.loads(body)["status"]["state"] == "running"

    wait_for(state, 120, "alice/echo to run", interval_s=0.5)


def open_metrics(serve) -> dict:
    status, content_type, body = http(serve, "GET", OPEN_METRICS, serve.alice)
    assert status == 200, body
    assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    text = body.decode()
    assert text.endswith("# EOF\n")
    return {family.name: family for family in text_string_to_metric_families(text)}


def series(serve, since: float) -> dict:
    query = urllib.parse.urlencode({"from": f"{since:.3f}", "step": "3600"})  # one step: all of it
    status, _, body = http(serve, "GET", f"{SERIES}?{query}", serve.alice)
    assert status == 200, body
    return json.loads(body)


def test_open_metrics_and_series_count_the_requests_sent(serve):
    HfApi(endpoint=serve.url, token=serve.alice).create_inference_endpoint(
        "echo", repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", custom_image=ECHO, type="private",
        min_replica=1, max_replica=2,
    )
    running(serve)
    since = time.time() - 1
    for i in range(SENT):
        status, _, _ = http(serve, "POST", "/endpoints/alice/echo/generate", serve.alice, {"inputs": f"hello {i}"})
        assert status == 200

    # OpenMetrics: the counter holds every request sent, and only those (never the control plane's
    # probes). A worker process's answers reach the control plane within milliseconds: wait for them.
    def all_counted():
        families = open_metrics(serve)
        return families if sum(s.value for s in families["http_requests"].samples) >= SENT else None

    families = wait_for(all_counted, 10, f"{SENT} requests in the OpenMetrics export", interval_s=0.05)
    requests = families["http_requests"]
    # Named as the reference's export names it: `http_requests` samples, which OpenMetrics allows untyped only.
    assert requests.type == "unknown" and {s.name for s in requests.samples} == {"http_requests"}
    by_label = {(s.labels["replica_id"], s.labels["status_code"]): s.value for s in requests.samples}
    assert sum(by_label.values()) == SENT
    [(replica, code)] = by_label
    assert code == "200" and replica
    summary = {(s.name, s.labels.get("quantile")): s.value for s in families["latency_distribution"].samples}
    assert summary[("latency_distribution_count", None)] == SENT
    assert 0 < summary[("latency_distribution", "0.5")] <= summary[("latency_distribution", "0.99")]
    assert {s.value for s in families["running_replicas"].samples} == {1}
    assert "pending_requests" in families

    # The series: every request sent, within one step, all 2xx.
    def counted():
        body = series(serve, since)
        return body if body["series"]["requests"]["total"] == [SENT] else None

    body = wait_for(counted, 30, f"the series to count {SENT} requests")
    assert body["series"]["requests"]["2xx"] == [SENT]
    assert body["series"]["requests_share"]["2xx"] == [1.0]
    assert body["series"]["latency_seconds"]["p50"][0] > 0
    assert body["series"]["max_replicas"] == [2]

    # The engine's own gauges (the echo engine's vLLM names) and the replica's docker stats.
    def signals():
        found = open_metrics(serve)
        return found if {"engine_running_requests", "engine_kv_cache_usage_ratio"} <= set(found) and any(
            s.labels["replica_id"] == replica for s in found["cpu_usage_percent"].samples) else None

    found = wait_for(signals, 60, "engine signals and usage of the replica")
    assert {s.labels["replica_id"]: s.value for s in found["engine_queue_requests"].samples} == {replica: 0}
    assert [s.value for s in found["memory_usage_bytes"].samples if s.labels["replica_id"] == replica][0] > 0

    # The main /metrics, for a token with the metrics scope: the same signals by endpoint and replica.
    status, _, text = http(serve, "GET", "/metrics", serve.scraper)
    assert status == 200
    main = {f.name: f for f in prometheus_families(text.decode())}
    labels = {"endpoint": "alice/echo", "replica": replica}
    assert any(s.labels == labels for s in main["endpointd_engine_queue_requests"].samples)
    assert [s.value for s in main["endpointd_endpoint_max_replicas"].samples if s.labels == {"endpoint": "alice/echo"}] == [2]
    # Every background loop serve runs is supervised, its failures counted from 0; none failed here.
    failures = {s.labels["loop"]: s.value for s in main["endpointd_background_loop_failures"].samples
                if s.name.endswith("_total")}
    assert failures == dict.fromkeys(LOOPS, 0.0)


def test_another_namespace_reads_none_of_it(serve):
    HfApi(endpoint=serve.url, token=serve.alice).create_inference_endpoint(
        "echo", repository=serve.model, framework="custom", accelerator="cpu", instance_size="x1",
        instance_type="intel-icl", region="local", vendor="local", custom_image=ECHO, type="private",
        min_replica=0, max_replica=1,
    )
    for path in (OPEN_METRICS, SERIES):
        assert http(serve, "GET", path, serve.bob)[0] == 403
        assert http(serve, "GET", path, serve.scraper)[0] == 403  # the metrics scope is for /metrics only
        assert http(serve, "GET", path)[0] == 401
        assert http(serve, "GET", path, serve.admin_token)[0] == 200
    assert http(serve, "GET", "/v2/endpoint/alice/nope/open-metrics", serve.alice)[0] == 404
    assert http(serve, "GET", f"{SERIES}?step=-1", serve.alice)[0] == 400
