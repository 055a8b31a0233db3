"""The channel's messages (messages.py) as JSON and back: the one place that knows their wire
shape, `{"op": KIND, ...fields}`. Both ends run the same code, so the shape only has to agree
with itself; what does not decode is a broken peer (`Malformed`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..core.config import ProxyConfig
from ..core.control import AuthType, Identity, Replica, RouteEntry, RouteState
from ..core.engine_routes import EngineKind
from ..core.limits import Override
from ..core.metrics import Answers, Family
from ..core.pending import PendingSnapshot
from ..core.ratelimit import Refusal
from .messages import (
    Admit,
    Admitted,
    AskFamilies,
    Counts,
    Families,
    Hello,
    LimitsChanged,
    Message,
    Ready,
    Release,
    RouteChanged,
    RouteRemoved,
    TappedAnswers,
    ToMain,
    ToWorker,
    Verified,
    Verify,
    Wake,
    Welcome,
)


class Malformed(ValueError):
    """A message that is not JSON, of no kind this side takes, or without the fields of its kind."""


def encode(message: Message) -> bytes:
    return json.dumps(_fields(message), separators=(",", ":")).encode()


def _fields(message: Message) -> dict[str, object]:
    match message:
        case Hello(worker):
            return {"op": "hello", "worker": worker}
        case Ready():
            return {"op": "ready"}
        case Counts(snap):
            return {"op": "counts", "endpoints": snap.endpoints, "replicas": snap.replicas, "arrivals": snap.arrivals}
        case Verify(request, token):
            return {"op": "verify", "id": request, "token": token}
        case Admit(request, namespace, token):
            return {"op": "admit", "id": request, "namespace": namespace, "token": token}
        case Release(request):
            return {"op": "release", "id": request}
        case Wake(namespace, name):
            return {"op": "wake", "namespace": namespace, "name": name}
        case TappedAnswers(answers):
            return {"op": "answers", "answers": {
                key: {"kept": a.kept, "beyond": [[r, c, n] for (r, c), n in a.beyond.items()],
                      "in": a.bytes_in, "out": a.bytes_out}
                for key, a in answers.items()
            }}
        case Families(request, families):
            return {"op": "families", "id": request, "families": families}
        case Welcome(config, port, probe_secret, entries, tap, handoff, overrides):
            return {"op": "welcome", "config": dataclasses.asdict(config), "port": port, "probe_secret": probe_secret,
                    "entries": [_entry_out(e) for e in entries], "tap": tap, "handoff": handoff,
                    "overrides": [[namespace, *_override_out(o)] for namespace, o in overrides]}
        case RouteChanged(entry):
            return {"op": "route", "entry": _entry_out(entry)}
        case RouteRemoved(namespace, name):
            return {"op": "remove", "namespace": namespace, "name": name}
        case Verified(request, identity):
            return {"op": "verified", "id": request, "identity": _identity_out(identity)}
        case Admitted(request, refusal, held):
            return {"op": "admitted", "id": request, "held": held, "refusal": None if refusal is None else
                    [refusal.namespace, refusal.limit, refusal.value, refusal.retry_after_s]}
        case LimitsChanged(namespace, override):
            return {"op": "limits", "namespace": namespace,
                    "override": None if override is None else _override_out(override)}
        case AskFamilies(request):
            return {"op": "metrics", "id": request}


def to_main(data: bytes) -> ToMain:
    """A message a worker sent."""
    fields = _loaded(data)
    try:
        match fields.get("op"):
            case "hello":
                return Hello(str(fields["worker"]))
            case "ready":
                return Ready()
            case "counts":
                return Counts(PendingSnapshot(fields["endpoints"], fields["replicas"], fields["arrivals"]))
            case "verify":
                return Verify(fields["id"], fields["token"])
            case "admit":
                return Admit(fields["id"], fields["namespace"], fields["token"])
            case "release":
                return Release(fields["id"])
            case "wake":
                return Wake(fields["namespace"], fields["name"])
            case "answers":
                return TappedAnswers({
                    key: Answers([tuple(k) for k in a["kept"]], {(r, c): n for r, c, n in a["beyond"]},
                                 int(a["in"]), int(a["out"]))
                    for key, a in fields["answers"].items()
                })
            case "families":
                return Families(fields["id"], [_family_in(f) for f in fields["families"]])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise Malformed(f"a {fields.get('op')!r} message without its fields ({error!r})") from None
    raise Malformed(f"an unknown message {fields.get('op')!r}")


def to_worker(data: bytes) -> ToWorker:
    """A message the main process sent."""
    fields = _loaded(data)
    try:
        match fields.get("op"):
            case "welcome":
                return Welcome(ProxyConfig(**fields["config"]), fields["port"], fields["probe_secret"],
                               tuple(_entry_in(e) for e in fields["entries"]), fields["tap"], fields["handoff"],
                               tuple((namespace, Override(rpm, concurrent))
                                     for namespace, rpm, concurrent in fields["overrides"]))
            case "route":
                return RouteChanged(_entry_in(fields["entry"]))
            case "remove":
                return RouteRemoved(fields["namespace"], fields["name"])
            case "verified":
                return Verified(fields["id"], _identity_in(fields["identity"]))
            case "admitted":
                refusal = fields["refusal"]
                return Admitted(fields["id"], None if refusal is None else Refusal(*refusal), fields["held"])
            case "limits":
                override = fields["override"]
                return LimitsChanged(fields["namespace"], None if override is None else Override(*override))
            case "metrics":
                return AskFamilies(fields["id"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise Malformed(f"a {fields.get('op')!r} message without its fields ({error!r})") from None
    raise Malformed(f"an unknown message {fields.get('op')!r}")


def _loaded(data: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(data)
    except ValueError as error:
        raise Malformed(f"not JSON ({error})") from None
    if not isinstance(fields, dict):
        raise Malformed(f"not a JSON object but {type(fields).__name__}")
    return fields


def _entry_out(entry: RouteEntry) -> dict[str, object]:
    return {
        "namespace": entry.namespace, "name": entry.name, "auth": entry.auth.value, "state": entry.state.value,
        "replicas": [[r.id, r.address, r.api_key] for r in entry.replicas], "coming": entry.coming,
        "domain": entry.domain, "message": entry.message, "asleep_since": entry.asleep_since,
        "no_capacity": entry.no_capacity, "engine": entry.engine.value, "wake_s": entry.wake_s,
        "sleeping": entry.sleeping,
    }


def _entry_in(data: dict[str, Any]) -> RouteEntry:
    return RouteEntry(
        namespace=data["namespace"], name=data["name"], auth=AuthType(data["auth"]), state=RouteState(data["state"]),
        replicas=tuple(Replica(i, a, k) for i, a, k in data["replicas"]), coming=data["coming"],
        domain=data["domain"], message=data["message"], asleep_since=data["asleep_since"],
        no_capacity=data["no_capacity"], engine=EngineKind(data["engine"]), wake_s=data["wake_s"],
        sleeping=data["sleeping"],
    )


def _override_out(override: Override) -> list[int | None]:
    return [override.rpm, override.concurrent]


def _identity_out(identity: Identity | None) -> dict[str, object] | None:
    if identity is None:
        return None
    return {"user": identity.user, "orgs": sorted(identity.orgs), "is_admin": identity.is_admin,
            "scopes": sorted(identity.scopes)}


def _identity_in(data: dict[str, Any] | None) -> Identity | None:
    if data is None:
        return None
    return Identity(data["user"], frozenset(data["orgs"]), data["is_admin"], frozenset(data["scopes"]))


def _family_in(data: list[Any]) -> Family:
    name, documentation, kind, unit, samples = data
    return name, documentation, kind, unit, [(s, labels, value) for s, labels, value in samples]
