"""The Inference Endpoints v2 wire format (../shared/HF-API.md): request bodies parsed into a
frozen `EndpointSpec` with clear errors, sparse updates, and responses in the client's shape.
Pure functions: no HTTP, no storage."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from engines.hardware import ComputeOffer
from proxy.control import AuthType

from .state import State

NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")  # 1-32 chars, no leading/trailing '-'
SIZE = re.compile(r"x[1-9][0-9]*")
VARIANTS = ("vLLM", "sGLang", "tgi", "tei", "llamacpp", "hfServe", "custom", "huggingface")
TYPES = {"public": AuthType.PUBLIC, "authenticated": AuthType.AUTHENTICATED, "protected": AuthType.AUTHENTICATED,
         "private": AuthType.PRIVATE}
ACCELERATORS = ("cpu", "gpu")
# Defaults of the reference service (HF-API.md §12, DESIGN.md "Control loop").
DEFAULT_MIN_REPLICA, DEFAULT_MAX_REPLICA = 1, 2
DEFAULT_THRESHOLDS = {"pendingRequests": 1.5, "hardwareUsage": 80.0}
DEFAULT_SCALE_TO_ZERO_MIN = 15  # [spec-md] EndpointScaling: "default: 15, requires minReplica=0"
# The reference accepts 15-2880 minutes; an on-prem host has no reason to forbid short idle
# times (a test box, a laptop), so only the upper bound is kept.
MAX_SCALE_TO_ZERO_MIN = 2880
DEFAULT_HEALTH_ROUTE = "/health"
LOCAL_PROVIDER = "local"  # vendor and region of this host in GET /v2/provider


class WireError(ValueError):
    """A request body that cannot be accepted; the message names the JSON path and what to fix."""


class ChangeKind(enum.StrEnum):
    NONE = "none"
    IN_PLACE = "in-place"  # scaling, access, routing, tags: no container restarts
    ROLL = "roll"  # model, image, hardware, env: new replicas replace the old ones


@dataclass(frozen=True)
class Scaling:
    min_replica: int = DEFAULT_MIN_REPLICA
    max_replica: int = DEFAULT_MAX_REPLICA
    scale_to_zero_timeout_min: int | None = None
    metric: str = "pendingRequests"
    threshold: float = DEFAULT_THRESHOLDS["pendingRequests"]

    @property
    def idle_timeout_min(self) -> int | None:
        """Minutes idle before scaling to zero; None when min > 0 (never)."""
        if self.min_replica > 0:
            return None
        return self.scale_to_zero_timeout_min or DEFAULT_SCALE_TO_ZERO_MIN


@dataclass(frozen=True)
class Compute:
    accelerator: str
    instance_type: str
    instance_size: str
    scaling: Scaling = Scaling()


@dataclass(frozen=True)
class Model:
    repository: str
    framework: str = "pytorch"
    revision: str | None = None
    task: str | None = None
    image: dict[str, Any] = field(default_factory=lambda: {"huggingface": {}})
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # never rendered nor logged


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    type: str
    compute: Compute
    model: Model
    provider: dict[str, Any] = field(default_factory=dict)
    route_domain: str | None = None
    route_path: str | None = None
    private_service: dict[str, Any] | None = None
    cache_http_responses: bool | None = None
    tags: tuple[str, ...] = ()

    @property
    def variant(self) -> str:
        return next(iter(self.model.image))

    @property
    def health_route(self) -> str:
        options = self.model.image[self.variant]
        return options.get("healthRoute") or options.get("health_route") or DEFAULT_HEALTH_ROUTE

    @property
    def auth(self) -> AuthType:
        return TYPES[self.type]


# --- reading JSON with paths ----------------------------------------------------------------


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{path} must be a JSON object; got {value!r}")
    return value


def _str(value: Any, path: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise WireError(f"{path} must be a non-empty string; got {value!r}")
    return value


def _int(value: Any, path: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise WireError(f"{path} must be an integer {bound}; got {value!r}")
    return value


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WireError(f"{path} must be a list of strings; got {value!r}")
    return tuple(value)


def _str_map(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise WireError(f"{path} must be an object of string values; got a {type(value).__name__}")
    return dict(value)


def _image(value: Any) -> dict[str, Any]:
    image = _obj(value, "model.image")
    if len(image) != 1 or next(iter(image)) not in VARIANTS:
        raise WireError(f"model.image must have exactly one key among {', '.join(VARIANTS)}; got {sorted(image)}")
    variant, options = next(iter(image.items()))
    _obj(options, f"model.image.{variant}")
    if variant == "custom":
        _str(options.get("url"), "model.image.custom.url")
    route = options.get("healthRoute")
    if route is not None and (not isinstance(route, str) or not route.startswith("/")):
        raise WireError(f"model.image.{variant}.healthRoute must be a path starting with '/'; got {route!r}")
    return {variant: dict(options)}


def _scaling(body: dict[str, Any], base: Scaling) -> Scaling:
    s = base
    if "minReplica" in body:
        s = replace(s, min_replica=_int(body["minReplica"], "compute.scaling.minReplica", 0))
        if s.min_replica > 0:  # leaving scale-to-zero: its idle timeout no longer applies
            s = replace(s, scale_to_zero_timeout_min=None)
    if "maxReplica" in body:
        s = replace(s, max_replica=_int(body["maxReplica"], "compute.scaling.maxReplica", 1))
    if "scaleToZeroTimeout" in body and body["scaleToZeroTimeout"] is not None:
        s = replace(s, scale_to_zero_timeout_min=_int(
            body["scaleToZeroTimeout"], "compute.scaling.scaleToZeroTimeout", 1, MAX_SCALE_TO_ZERO_MIN))
        if s.min_replica != 0:
            raise WireError(
                f"compute.scaling.scaleToZeroTimeout needs minReplica 0 (scale to zero); minReplica is {s.min_replica}"
            )
    measure = body.get("measure")
    if measure is not None:
        measure = _obj(measure, "compute.scaling.measure")
        if len(measure) != 1 or next(iter(measure)) not in DEFAULT_THRESHOLDS:
            raise WireError(f"compute.scaling.measure must have one key, pendingRequests or hardwareUsage; got {sorted(measure)}")
        metric, threshold = next(iter(measure.items()))
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS[metric]
        hi = 100 if metric == "hardwareUsage" else None
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold <= 0 or (hi and threshold > hi):
            raise WireError(
                f"compute.scaling.measure.{metric} must be a number greater than 0{' and at most 100 (percent)' if hi else ''}; got {threshold!r}"
            )
        s = replace(s, metric=metric, threshold=float(threshold))
    if s.max_replica < s.min_replica:
        raise WireError(
            f"compute.scaling.minReplica ({s.min_replica}) must not exceed compute.scaling.maxReplica ({s.max_replica})"
        )
    return s


def _compute(body: dict[str, Any], base: Compute | None) -> Compute:
    c = base
    fields = {}
    for key, attr in (("accelerator", "accelerator"), ("instanceType", "instance_type"), ("instanceSize", "instance_size")):
        if key in body or base is None:
            fields[attr] = _str(body.get(key), f"compute.{key}")
    if fields.get("accelerator") is not None and fields["accelerator"] not in ACCELERATORS:
        raise WireError(f"compute.accelerator must be cpu or gpu; got {fields['accelerator']!r}")
    if fields.get("instance_size") is not None and not SIZE.fullmatch(fields["instance_size"]):
        raise WireError(f"compute.instanceSize must look like x1, x2, x4…; got {fields['instance_size']!r}")
    c = replace(c, **fields) if c is not None else Compute(**fields)
    if "scaling" in body:
        c = replace(c, scaling=_scaling(_obj(body["scaling"], "compute.scaling"), c.scaling))
    return c


def _model(body: dict[str, Any], base: Model | None) -> Model:
    m = base if base is not None else Model(repository=_str(body.get("repository"), "model.repository"))
    if "repository" in body:
        m = replace(m, repository=_str(body["repository"], "model.repository"))
    if "framework" in body:
        m = replace(m, framework=_str(body["framework"], "model.framework", optional=True) or "pytorch")
    for key in ("revision", "task"):
        if key in body:
            m = replace(m, **{key: _str(body[key], f"model.{key}", optional=True)})
    if "image" in body:
        m = replace(m, image=_image(body["image"]))
    for key in ("command", "args"):
        if key in body:
            m = replace(m, **{key: _strings(body[key], f"model.{key}") if body[key] is not None else None})
    for key in ("env", "secrets"):
        if key in body and body[key] is not None:
            m = replace(m, **{key: _str_map(body[key], f"model.{key}")})
    overlap = set(m.env) & set(m.secrets)
    if overlap:
        raise WireError(f"model.env and model.secrets both set {sorted(overlap)[0]}; keep it in one of them")
    return m


def _top_level(body: dict[str, Any], spec: EndpointSpec) -> EndpointSpec:
    if "type" in body:
        kind = body["type"]
        if kind not in TYPES:
            raise WireError(f"type must be public, authenticated or private; got {kind!r}")
        spec = replace(spec, type="authenticated" if kind == "protected" else kind)
    if body.get("provider") is not None:
        spec = replace(spec, provider=dict(_obj(body["provider"], "provider")))
    if "route" in body and body["route"] is not None:
        route = _obj(body["route"], "route")
        domain = _str(route.get("domain"), "route.domain", optional=True)
        spec = replace(spec, route_domain=domain.lower() if domain else None,
                       route_path=_str(route.get("path"), "route.path", optional=True))
    if "privateService" in body:
        spec = replace(spec, private_service=_obj(body["privateService"], "privateService") if body["privateService"] else None)
    if "cacheHttpResponses" in body and body["cacheHttpResponses"] is not None:
        if not isinstance(body["cacheHttpResponses"], bool):
            raise WireError(f"cacheHttpResponses must be true or false; got {body['cacheHttpResponses']!r}")
        spec = replace(spec, cache_http_responses=body["cacheHttpResponses"])
    if "tags" in body and body["tags"] is not None:
        spec = replace(spec, tags=_strings(body["tags"], "tags"))
    return spec


def parse_create(body: Any) -> EndpointSpec:
    """`POST /v2/endpoint/{ns}` (HF-API.md §5). Unknown keys are ignored, wrong types are not."""
    body = _obj(body, "the request body")
    name = body.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise WireError(
            f"name must be 1 to 32 lowercase letters, digits or '-', not starting or ending with '-'; got {name!r}"
        )
    compute = _compute(_obj(body.get("compute"), "compute"), None)
    model = _model(_obj(body.get("model"), "model"), None)
    spec = EndpointSpec(name=name, type="authenticated", compute=compute, model=model)
    return _top_level(body, spec)


def apply_update(spec: EndpointSpec, body: Any) -> tuple[EndpointSpec, ChangeKind]:
    """Sparse `PUT` (HF-API.md §6): only the keys sent change; `model.image` is replaced whole and
    an empty `env`/`secrets` clears them. `name` cannot change."""
    body = _obj(body, "the request body")
    if "name" in body and body["name"] != spec.name:
        raise WireError(f"name cannot be changed (it is {spec.name!r}); create a new endpoint instead")
    new = spec
    if "compute" in body:
        new = replace(new, compute=_compute(_obj(body["compute"], "compute"), new.compute))
    if "model" in body:
        new = replace(new, model=_model(_obj(body["model"], "model"), new.model))
    new = _top_level(body, new)
    if new == spec:
        return new, ChangeKind.NONE
    hardware = (spec.compute.accelerator, spec.compute.instance_type, spec.compute.instance_size)
    if new.model != spec.model or (new.compute.accelerator, new.compute.instance_type, new.compute.instance_size) != hardware:
        return new, ChangeKind.ROLL
    return new, ChangeKind.IN_PLACE


# --- storage (secrets included: the store must keep them) -------------------------------------


def spec_to_json(spec: EndpointSpec) -> dict[str, Any]:
    s, m = spec.compute.scaling, spec.model
    return {
        "name": spec.name, "type": spec.type, "provider": spec.provider,
        "compute": {"accelerator": spec.compute.accelerator, "instanceType": spec.compute.instance_type,
                    "instanceSize": spec.compute.instance_size,
                    "scaling": {"minReplica": s.min_replica, "maxReplica": s.max_replica,
                                "scaleToZeroTimeout": s.scale_to_zero_timeout_min, "measure": {s.metric: s.threshold}}},
        "model": {"repository": m.repository, "framework": m.framework, "revision": m.revision, "task": m.task,
                  "image": m.image, "command": list(m.command) if m.command is not None else None,
                  "args": list(m.args) if m.args is not None else None, "env": m.env, "secrets": m.secrets},
        "route": {"domain": spec.route_domain, "path": spec.route_path},
        "privateService": spec.private_service, "cacheHttpResponses": spec.cache_http_responses, "tags": list(spec.tags),
    }


def spec_from_json(data: dict[str, Any]) -> EndpointSpec:
    return parse_create(data)


# --- responses -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusView:
    state: State
    message: str
    created_at: datetime
    updated_at: datetime
    url: str | None
    ready_replica: int
    target_replica: int


def wire_time(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ`: the client rejects `+00:00` (HF-API.md §7)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _public_image(image: dict[str, Any]) -> dict[str, Any]:
    variant, options = next(iter(image.items()))
    options = dict(options)
    if "credentials" in options:  # the username is shown, the password never
        options["credentials"] = {"username": options["credentials"].get("username")}
    return {variant: options}


def render_endpoint(spec: EndpointSpec, status: StatusView) -> dict[str, Any]:
    """`EndpointWithStatus` (HF-API.md §7). Secrets and registry passwords are never included."""
    stored = spec_to_json(spec)
    model = {k: v for k, v in stored["model"].items() if k != "secrets"}
    model["image"] = _public_image(spec.model.image)
    model["secrets"] = {}  # names only would leak nothing, but nothing is simpler and safe
    body = {
        "name": spec.name,
        "type": spec.type,
        "accountId": None,
        "provider": spec.provider,
        "compute": stored["compute"],
        "model": model,
        "healthRoute": spec.health_route,
        "route": stored["route"],
        "privateService": spec.private_service,
        "cacheHttpResponses": spec.cache_http_responses,
        "tags": list(spec.tags),
        "status": {
            "state": str(status.state),
            "message": status.message,
            "createdAt": wire_time(status.created_at),
            "updatedAt": wire_time(status.updated_at),
            "readyReplica": status.ready_replica,
            "targetReplica": status.target_replica,
        },
    }
    if status.url is not None:
        body["status"]["url"] = status.url
    return body


def render_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": items}


def render_provider(offers: list[ComputeOffer]) -> dict[str, Any]:
    """`GET /v2/provider/{ns}` (HF-API.md §9): this host as one vendor with one region."""
    computes = [
        {
            "id": f"{LOCAL_PROVIDER}-{o.instance_type}-{o.instance_size}",
            "accelerator": o.accelerator, "instanceType": o.instance_type, "instanceSize": o.instance_size,
            "architecture": o.architecture, "numAccelerators": o.num_accelerators, "numCpus": o.num_cpus,
            "memoryGb": o.memory_gb, "gpuMemoryGb": o.gpu_memory_gb, "pricePerHour": 0.0, "status": o.status,
            "quota": {"maxAccelerators": o.max_accelerators, "usedAccelerators": o.used_accelerators},
        }
        for o in offers
    ]
    return {"vendors": [{"name": LOCAL_PROVIDER, "regions": [{"name": LOCAL_PROVIDER, "computes": computes}]}]}


def audit_details(spec: EndpointSpec) -> dict[str, Any]:
    """What an audit entry records of a spec: enough to see what changed, never a secret."""
    s = spec.compute.scaling
    return {
        "repository": spec.model.repository, "revision": spec.model.revision, "image": spec.variant,
        "instance": f"{spec.compute.accelerator}/{spec.compute.instance_type}/{spec.compute.instance_size}",
        "replicas": [s.min_replica, s.max_replica], "type": spec.type,
        "env": sorted(spec.model.env), "secrets": sorted(spec.model.secrets),
    }
