"""The proxy's data as JSON for the channel: route entries, identities, pending snapshots,
metric families and tapped answers."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from ..core.control import AuthType, Identity, Replica, RouteEntry, RouteState
from ..core.metrics import Answers
from ..core.pending import PendingSnapshot


def entry_out(entry: RouteEntry) -> dict:
    return {
        "namespace": entry.namespace, "name": entry.name, "auth": entry.auth.value, "state": entry.state.value,
        "replicas": [[r.id, r.address, r.api_key] for r in entry.replicas], "coming": entry.coming,
        "domain": entry.domain, "message": entry.message, "asleep_since": entry.asleep_since,
        "no_capacity": entry.no_capacity,
    }


def entry_in(data: dict) -> RouteEntry:
    return RouteEntry(
        namespace=data["namespace"], name=data["name"], auth=AuthType(data["auth"]), state=RouteState(data["state"]),
        replicas=tuple(Replica(i, a, k) for i, a, k in data["replicas"]), coming=data["coming"],
        domain=data["domain"], message=data["message"], asleep_since=data["asleep_since"],
        no_capacity=data["no_capacity"],
    )


def identity_out(identity: Identity | None) -> dict | None:
    if identity is None:
        return None
    return {"user": identity.user, "orgs": sorted(identity.orgs), "is_admin": identity.is_admin,
            "scopes": sorted(identity.scopes)}


def identity_in(data: dict | None) -> Identity | None:
    if data is None:
        return None
    return Identity(data["user"], frozenset(data["orgs"]), data["is_admin"], frozenset(data["scopes"]))


def snapshot_out(snap: PendingSnapshot) -> dict:
    return {"endpoints": snap.endpoints, "replicas": snap.replicas, "arrivals": snap.arrivals}


def snapshot_in(data: dict) -> PendingSnapshot:
    return PendingSnapshot(data["endpoints"], data["replicas"], data["arrivals"])


def families_out(registry) -> list:
    return [
        [m.name, m.documentation, m.type, m.unit, [[s.name, s.labels, s.value] for s in m.samples]]
        for m in registry.collect()
    ]


def merge_families(sets: list[list]) -> list[Metric]:
    """Families of several processes as one: values of the same sample (name and labels) added,
    but the earliest of `_created` timestamps kept."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
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
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


def answers_out(taken: dict[str, Answers]) -> dict:
    return {key: {"kept": a.kept, "beyond": [[r, c, n] for (r, c), n in a.beyond.items()]} for key, a in taken.items()}


def answers_in(data: dict) -> dict[str, Answers]:
    return {
        key: Answers([tuple(k) for k in a["kept"]], {(r, c): n for r, c, n in a["beyond"]})
        for key, a in data.items()
    }
