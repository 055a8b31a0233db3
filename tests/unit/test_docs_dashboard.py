"""docs/grafana-dashboard.json reads only metrics that endpointd exports (names collected from the
real registries, with every collector registered as `endpointd serve` registers them) and has the
reference's Analytics graphs; docs/prometheus.yml scrapes with a bearer token."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from autoscaler.model.events import EventLog
from autoscaler.observe.analytics import Analytics, AnalyticsConfig
from autoscaler.observe.loops import Loops
from autoscaler.scaling.policy import PolicyConfig
from autoscaler.scaling.scaler import Scaler
from proxy.core.config import ProxyConfig
from proxy.core.control import InMemoryControlPlane
from proxy.core.pipeline import Pipeline

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = json.loads((DOCS / "grafana-dashboard.json").read_text())

# Sample names a family of each type exposes (prometheus_client's text format).
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "info": ("_info",), "stateset": ("",), "unknown": ("",)}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
                "inf", "nan"}


class NoEndpoints:
    def keys(self):
        return []


def exported_names() -> set[str]:
    pipeline = Pipeline(ProxyConfig(), InMemoryControlPlane())
    registry = pipeline.metrics.registry
    # What parts.py registers on the proxy's registry beside the proxy's own metrics.
    Loops(registry)
    Scaler(NoEndpoints(), pipeline.counter.snapshot, config=PolicyConfig(), scaling_of=lambda key: None,
           events=EventLog(), registry=registry)
    analytics = Analytics(AnalyticsConfig(), endpoints=NoEndpoints(), runtime=None, answers=pipeline.metrics,
                          pending=pipeline.counter.snapshot, routes=pipeline.control)
    registry.register(analytics.collector)
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def queries() -> list[str]:
    found = [target["expr"] for panel in DASHBOARD["panels"] for target in panel.get("targets", ())]
    found += [a["expr"] for a in DASHBOARD["annotations"]["list"] if "expr" in a]
    for variable in DASHBOARD["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords,
    label names (in selectors, `by (...)`, `label_values(_, label)`) or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_]+\s*\)", r"\1", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group()
        if expr[match.end():].lstrip().startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        names.add(word)
    return names


def test_the_name_extraction_sees_metrics_only():
    assert metric_names('histogram_quantile(0.5, sum by (endpoint, le) (rate(a_bucket{x=~"$e",y="b{c}"}[5m])))') == {"a_bucket"}
    assert metric_names("label_values(some_metric, endpoint)") == {"some_metric"}
    assert metric_names("sum(rate(x_total[$__rate_interval])) / sum(y)") == {"x_total", "y"}


def test_every_metric_the_dashboard_reads_is_exported():
    exported = exported_names()
    used = set().union(*(metric_names(expr) for expr in queries()))
    assert used, "the dashboard reads no metric"
    assert used <= exported, f"not exported by endpointd: {sorted(used - exported)}"


def test_the_dashboard_has_the_reference_analytics_graphs():
    titles = {panel["title"] for panel in DASHBOARD["panels"]}
    assert {"Requests by status class", "Pending requests", "Latency p50 / p90 / p95 / p99", "Running replicas vs max",
            "CPU usage", "Memory usage", "GPU usage", "VRAM usage", "Engine queue", "KV cache usage"} <= titles
    latency = next(p for p in DASHBOARD["panels"] if p["title"].startswith("Latency"))
    assert [t["expr"].split(",")[0] for t in latency["targets"]] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.9", "0.95", "0.99")]
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all('endpoint=~"$endpoint"' in t["expr"] for t in panel["targets"]), panel["title"]


def test_the_prometheus_config_scrapes_both_routes_with_a_bearer_token():
    config = yaml.safe_load((DOCS / "prometheus.yml").read_text())
    jobs = {job["metrics_path"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"/metrics", "/v2/endpoint/acme/llm/open-metrics"}
    for job in jobs.values():
        auth = job["authorization"]
        assert auth["type"] == "Bearer" and ("credentials" in auth or "credentials_file" in auth)
        assert job["static_configs"][0]["targets"]
    assert "endpointd tokens create prometheus --label prometheus --scope metrics" in (DOCS / "prometheus.yml").read_text()
