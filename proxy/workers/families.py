"""Metric families as data (core/metrics.py Family), so that a worker can send its registry to the
main process, whose /metrics adds every process's families up."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..core.metrics import Family


def families_of(registry: Collector) -> list[Family]:
    return [
        (m.name, m.documentation, m.type, m.unit, [(s.name, s.labels, s.value) for s in m.samples])
        for m in registry.collect()
    ]


def merge_families(sets: list[list[Family]]) -> list[Metric]:
    """Families of several processes as one: values of the same sample (name and labels) added,
    but the earliest of `_created` timestamps kept."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in sets:
        for name, documentation, kind, unit, samples in families:
            if name not in merged:
                merged[name] = Metric(name, documentation, kind, unit)
                values[name] = {}
            into = values[name]
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in into:
                    into[key] = value
                elif sample_name.endswith("_created"):
                    into[key] = min(into[key], value)
                else:
                    into[key] += value
    for name, metric in merged.items():
        for (sample_name, label_pairs), value in values[name].items():
            metric.add_sample(sample_name, dict(label_pairs), value)
    return list(merged.values())
