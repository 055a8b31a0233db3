"""The Inference Endpoints v2 wire format: request bodies to `EndpointSpec`, sparse updates, responses.

A section cited as §N is that of docs/wire-format.md (what the unmodified client sends and reads)."""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, NoReturn, TypeVar

from autoscaler.model.spec import (
    SLEEPERS,
    Compute,
    EndpointSpec,
    Measure,
    Model,
    Provider,
    Route,
    Scaling,
    ScalingMetric,
)
from autoscaler.model.state import State
from autoscaler.model.times import wire_time
from engines import spec_rules
from engines.errors import EndpointdError
from engines.hardware import ACCELERATORS, ComputeOffer
from proxy.core.control import AuthType

# One rule for every key of a body, create or update:
# - absent: on create the default, or `WireError` for the keys the client always sends; on update, unchanged;
# - null: the default (revision, task, command, args, route parts, privateService, cacheHttpResponses → null;
#   env, secrets → {}; tags → []; measure → pendingRequests 1.5; scaleToZeroTimeout → 15 when minReplica is 0,
#   else null). The client never sends null in an update (§6): this only lets a hand-written request reset a
#   key. A required key cannot be null;
# - a value: validated and taken. Objects (compute, scaling, model, provider, route) merge key by key; the
#   leaves, `model.image`, `model.env`, `model.secrets`, `measure` and `privateService` included, are replaced
#   whole, so `{}` clears env or secrets (§6: the client sends `{}` to mean that) and `model.image` is replaced.
# Unknown keys are ignored at every level (forward compatibility); a known key of the wrong type is an error.

NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")  # 1-32 chars, no leading/trailing '-', as the reference
SIZE = re.compile(r"x[1-9][0-9]*")  # x1, x2, ...: a count of CPUs or GPUs; x0 would be nothing
TYPE_ALIASES = {"protected": AuthType.AUTHENTICATED}  # [spec-2023] spelling, still in UI exports (§12)
# Defaults of the reference service when `measure` or its threshold is null or absent (§12, autoscaling.mdx).
# pendingRequests is the default metric: the proxy counts pending requests exactly; hardware use is sampled.
# engineQueue (endpointd's own): 2 requests running or waiting per replica, what llama.cpp's
# `-np 2` runs at once; an engine with more slots warrants a higher threshold.
DEFAULT_THRESHOLDS = {ScalingMetric.PENDING_REQUESTS: 1.5, ScalingMetric.HARDWARE_USAGE: 80.0,
                      ScalingMetric.ENGINE_QUEUE: 2.0}
DEFAULT_MEASURE = Measure(ScalingMetric.PENDING_REQUESTS, DEFAULT_THRESHOLDS[ScalingMetric.PENDING_REQUESTS])
# minReplica 0 with a null scaleToZeroTimeout: the reference's EndpointScaling says "default: 15".
DEFAULT_SCALE_TO_ZERO_MIN = 15
# The reference accepts 15-2880 minutes (§12, third-party, UNCONFIRMED). The upper bound is kept; the lower
# one is 1 because on one's own host a short idle time costs nothing, and tests need to see it happen.
MIN_SCALE_TO_ZERO_MIN, MAX_SCALE_TO_ZERO_MIN = 1, 2880
# compute.scaling.sleepAfter, in seconds: llama.cpp's --sleep-idle-seconds takes whole seconds >= 1.
MIN_SLEEP_AFTER_S, MAX_SLEEP_AFTER_S = 1, 86_400
LOCAL_PROVIDER = "local"  # vendor and region of this host in GET /v2/provider (§9)

T = TypeVar("T")
_MISSING: Any = spec_rules.MISSING  # a key the body does not have; messages say "got nothing (the key is missing)"


# Pending requests per replica before another is added: beyond this no engine batches usefully.
MAX_PENDING_THRESHOLD = 10_000
# The format's own bound on replicas (the operator's max_replicas_per_endpoint is lower).
MAX_REPLICAS = 1000
# A local path may be long (PATH_MAX is 4096); a Hub id is at most 96 characters; 1024 covers both sanely.
MAX_REPOSITORY_CHARS = 1024
# framework, task, revision: short words, branch names or commit shas.
MAX_NAME_CHARS = 256
# model.downloadPattern: a handful of globs is what any engine needs.
MAX_DOWNLOAD_PATTERNS, MAX_PATTERN_CHARS = 64, 256


class WireError(EndpointdError, ValueError):
    """A request body that cannot be accepted; the message names the JSON path, the bad value and what to send."""

    status = 400


class ChangeKind(enum.StrEnum):
    """What an update asks of the replicas."""

    NONE = "none"
    SCALING_ONLY = "scaling-only"  # scaling, type, provider, route, privateService, cache, tags: no restart
    ROLL = "roll"  # model.* (image, env, secrets, command, args...) or hardware: new replicas replace the old


@dataclass(frozen=True)
class StatusView:
    """What the controller knows of an endpoint, as `render_endpoint` shows it under `status`."""

    state: State
    message: str
    created_at: datetime  # timezone-aware
    updated_at: datetime
    url: str | None  # only when the health route answers 200 (§13 item 5)
    ready_replica: int
    target_replica: int
    error_message: str | None = None  # an extra `errorMessage`: the client ignores it (§7)
    tier: str | None = None  # an extra `tier` (warm, sleeping, parked, cold): the client ignores it

    def __post_init__(self) -> None:
        for moment in (self.created_at, self.updated_at):
            if moment.tzinfo is None:
                raise ValueError(f"StatusView times must be timezone-aware; got naive {moment.isoformat()}")


# --- reading JSON, every failure naming its path ------------------------------------------------


def _fail(path: str, rule: str, value: Any) -> NoReturn:
    raise WireError(f"{path} must be {rule}; got {spec_rules.show(value)}")


def _shared(rule: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A rule the engine presets enforce too (engines/spec_rules.py), its refusal as a WireError."""
    try:
        return rule(*args, **kwargs)
    except spec_rules.PresetError as error:
        raise WireError(str(error)) from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _take(body: dict[str, Any], key: str, path: str, parse: Callable[[Any, str], T],
          keep: Any = _MISSING, default: Any = _MISSING) -> T:
    """One key, by the rule above: absent → `keep` (update) or `default`, null → `default`; a key
    without a default is required and its parser reports it."""
    value = body.get(key, _MISSING)
    if value is _MISSING and keep is not _MISSING:
        return keep
    if (value is None or value is _MISSING) and default is not _MISSING:
        return default
    return parse(value, _join(path, key))


def _kept(base: Any, attr: str) -> Any:
    return _MISSING if base is None else getattr(base, attr)


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, "a JSON object", value)
    return value


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        _fail(path, "a non-empty string", value)
    return value


def _texts(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(path, "a list of strings", value)
    return tuple(value)


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, "true or false", value)
    return value


def _integer(value: Any, path: str, lo: int, hi: int | None, rule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        _fail(path, rule, value)
    return value


def _env(value: Any, path: str) -> dict[str, str]:
    return _shared(spec_rules.env, value, path)


def _secrets(value: Any, path: str) -> dict[str, str]:
    return _shared(spec_rules.env, value, path, secret=True)


# --- the parts of a spec ------------------------------------------------------------------------


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        _fail(path, "1 to 32 lowercase letters, digits or '-', not starting or ending with '-'", value)
    return value


def _type(value: Any, path: str) -> AuthType:
    if isinstance(value, str) and value in TYPE_ALIASES:
        return TYPE_ALIASES[value]
    if value not in tuple(AuthType):
        _fail(path, 'one of "public", "authenticated", "private" ("protected" is read as "authenticated")', value)
    return AuthType(value)


def _provider(body: dict[str, Any], base: Provider | None) -> Provider:
    return Provider(
        vendor=_take(body, "vendor", "provider", _text, keep=_kept(base, "vendor")),
        region=_take(body, "region", "provider", _text, keep=_kept(base, "region")),
    )


# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens, 63 characters
# each, 253 in all. The last label may be neither all digits nor hexadecimal ("0x7f000001"), so
# that no form a resolver reads as an IPv4 address ("127.1", "2130706433") passes for a name:
# IP literals are the server's own names, never an endpoint's.
DOMAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def _domain(value: Any, path: str) -> str:
    rule = "a DNS host name such as \"e1.models.example.com\" (letters, digits, hyphens and dots; not an IP address)"
    if not isinstance(value, str):
        _fail(path, rule, value)
    domain = value.lower()
    labels = domain.split(".")
    if (len(domain) > 253 or not all(DOMAIN_LABEL.fullmatch(label) for label in labels)
            or NUMERIC_LABEL.fullmatch(labels[-1])):
        _fail(path, rule, value)
    return domain


def _route(body: dict[str, Any], base: Route | None) -> Route:
    def path_(value: Any, path: str) -> str:
        if not isinstance(value, str) or not value.startswith("/"):
            _fail(path, "a path starting with '/'", value)
        return value

    return Route(
        domain=_take(body, "domain", "route", _domain, _kept(base, "domain"), None),
        path=_take(body, "path", "route", path_, _kept(base, "path"), None),
    )


def _measure(value: Any, path: str) -> Measure:
    rule = 'an object with one key, "pendingRequests", "hardwareUsage" or "engineQueue", e.g. {"pendingRequests": 1.5}'
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in tuple(ScalingMetric):
        _fail(path, rule, value)
    key, threshold = next(iter(value.items()))
    metric = ScalingMetric(key)
    if threshold is None:
        return Measure(metric, DEFAULT_THRESHOLDS[metric])
    percent = metric is ScalingMetric.HARDWARE_USAGE
    high = 100 if percent else MAX_PENDING_THRESHOLD
    # Written so that NaN fails too: every comparison with NaN is false.
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= high:
        _fail(f"{path}.{key}", f"a number greater than 0 and at most {high}" + (" (percent)" if percent else ""), threshold)
    return Measure(metric, float(threshold))


def _metric(value: Any, path: str) -> ScalingMetric:
    if value not in tuple(ScalingMetric):
        _fail(path, '"pendingRequests", "hardwareUsage" or "engineQueue"', value)
    return ScalingMetric(value)


def _scaling_measure(body: dict[str, Any], base: Measure | None) -> Measure:
    """`measure` is what the client sends; `metric` (UI exports, §12) only selects one; `threshold` is ignored."""
    path = "compute.scaling"
    named = _take(body, "metric", path, _metric, default=None)
    if body.get("measure") is not None:
        measure = _measure(body["measure"], f"{path}.measure")
        if named is not None and named is not measure.metric:
            _fail(f"{path}.metric", f'the key of {path}.measure ("{measure.metric}") or null', named)
        return measure
    if named is not None:
        return base if base is not None and base.metric is named else Measure(named, DEFAULT_THRESHOLDS[named])
    return base if base is not None and "measure" not in body else DEFAULT_MEASURE


def _scaling(body: dict[str, Any], base: Scaling | None) -> Scaling:
    path = "compute.scaling"
    max_replica = _take(body, "maxReplica", path, lambda v, p: _integer(
        v, p, 1, MAX_REPLICAS, f"an integer between 1 and {MAX_REPLICAS}"),
                        keep=_kept(base, "max_replica"))
    if base is None or "minReplica" in body:
        min_replica = _take(body, "minReplica", path, lambda v, p: _integer(
            v, p, 0, max_replica, f"an integer between 0 and maxReplica ({max_replica})"))
    elif base.min_replica > max_replica:
        _fail(f"{path}.maxReplica", f"an integer of at least minReplica ({base.min_replica})", max_replica)
    else:
        min_replica = base.min_replica

    timeout = body.get("scaleToZeroTimeout")
    if timeout is not None:
        timeout = _integer(timeout, f"{path}.scaleToZeroTimeout", MIN_SCALE_TO_ZERO_MIN, MAX_SCALE_TO_ZERO_MIN,
                           f"an integer number of minutes between {MIN_SCALE_TO_ZERO_MIN} and {MAX_SCALE_TO_ZERO_MIN}")
        if min_replica != 0:
            raise WireError(
                f"{path}.scaleToZeroTimeout needs {path}.minReplica 0 to scale to zero, but minReplica is "
                f"{min_replica}: send minReplica 0, or scaleToZeroTimeout null; got {timeout}")
    elif min_replica > 0:
        timeout = None  # also when leaving scale-to-zero: its idle timeout no longer applies
    elif base is not None and base.scale_to_zero_timeout_min is not None and "scaleToZeroTimeout" not in body:
        timeout = base.scale_to_zero_timeout_min
    else:
        timeout = DEFAULT_SCALE_TO_ZERO_MIN
    sleep_after = _take(body, "sleepAfter", path, lambda v, p: _integer(
        v, p, MIN_SLEEP_AFTER_S, MAX_SLEEP_AFTER_S,
        f"an integer number of seconds between {MIN_SLEEP_AFTER_S} and {MAX_SLEEP_AFTER_S}, or null for never"),
        _kept(base, "sleep_after_s"), None)
    return Scaling(min_replica, max_replica, timeout, _scaling_measure(body, None if base is None else base.measure),
                   sleep_after)


def _accelerator(value: Any, path: str) -> str:
    if value not in ACCELERATORS:
        _fail(path, " or ".join(f'"{a}"' for a in ACCELERATORS), value)
    return value


def _size(value: Any, path: str) -> str:
    if not isinstance(value, str) or not SIZE.fullmatch(value):
        _fail(path, 'an instance size such as "x1", "x2", "x4"', value)
    return value


def _compute(body: dict[str, Any], base: Compute | None) -> Compute:
    k = partial(_kept, base)
    return Compute(
        accelerator=_take(body, "accelerator", "compute", _accelerator, k("accelerator")),
        instance_type=_take(body, "instanceType", "compute", _text, k("instance_type")),
        instance_size=_take(body, "instanceSize", "compute", _size, k("instance_size")),
        scaling=_take(body, "scaling", "compute",
                      lambda v, p: _scaling(_object(v, p), None if base is None else base.scaling), k("scaling")),
    )


def _image(value: Any, path: str) -> dict[str, Any]:
    """Validated as far as its shape (engines/spec_rules.py); each variant's own keys are the engine presets' to check."""
    _shared(spec_rules.image, value, path)
    return copy.deepcopy(value)


def _bounded(limit: int) -> Callable[[Any, str], str]:
    def parse(value: Any, path: str) -> str:
        if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
            _fail(path, f"a non-empty string of at most {limit} characters", value)
        return value

    return parse


def _patterns(value: Any, path: str) -> tuple[str, ...]:
    rule = (f"a list of 1 to {MAX_DOWNLOAD_PATTERNS} file patterns such as [\"*.json\", \"*.safetensors\"], "
            f"each at most {MAX_PATTERN_CHARS} characters")
    if (not isinstance(value, list) or not 0 < len(value) <= MAX_DOWNLOAD_PATTERNS
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_PATTERN_CHARS and "\0" not in v for v in value)):
        _fail(path, rule, value)
    return tuple(value)


def _model(body: dict[str, Any], base: Model | None) -> Model:
    k = partial(_kept, base)
    model = Model(
        repository=_take(body, "repository", "model", _bounded(MAX_REPOSITORY_CHARS), k("repository")),
        framework=_take(body, "framework", "model", _bounded(MAX_NAME_CHARS), k("framework")),
        revision=_take(body, "revision", "model", _bounded(MAX_NAME_CHARS), k("revision"), None),
        task=_take(body, "task", "model", _bounded(MAX_NAME_CHARS), k("task"), None),
        image=_take(body, "image", "model", _image, k("image")),
        command=_take(body, "command", "model", _texts, k("command"), None),
        args=_take(body, "args", "model", _texts, k("args"), None),
        env=_take(body, "env", "model", _env, k("env"), {}),
        secrets=_take(body, "secrets", "model", _secrets, k("secrets"), {}),
        download_pattern=_take(body, "downloadPattern", "model", _patterns, k("download_pattern"), None),
    )
    _shared(spec_rules.disjoint, model.env, model.secrets)
    return model


def _spec(body: dict[str, Any], base: EndpointSpec | None) -> EndpointSpec:
    k = partial(_kept, base)
    spec = EndpointSpec(
        name=_take(body, "name", "", _name, k("name")),
        type=_take(body, "type", "", _type, k("type")),
        provider=_take(body, "provider", "",
                       lambda v, p: _provider(_object(v, p), None if base is None else base.provider), k("provider")),
        compute=_take(body, "compute", "",
                      lambda v, p: _compute(_object(v, p), None if base is None else base.compute), k("compute")),
        model=_take(body, "model", "",
                    lambda v, p: _model(_object(v, p), None if base is None else base.model), k("model")),
        route=_take(body, "route", "",
                    lambda v, p: _route(_object(v, p), None if base is None else base.route), k("route"), Route()),
        private_service=_take(body, "privateService", "", lambda v, p: copy.deepcopy(_object(v, p)),
                              k("private_service"), None),
        cache_http_responses=_take(body, "cacheHttpResponses", "", _flag, k("cache_http_responses"), None),
        tags=_take(body, "tags", "", _texts, k("tags"), ()),
    )
    _check_sleep(spec)
    return spec


def _check_sleep(spec: EndpointSpec) -> None:
    if spec.compute.scaling.sleep_after_s is not None and spec.model.variant not in SLEEPERS:
        raise WireError(
            f"compute.scaling.sleepAfter is {spec.compute.scaling.sleep_after_s}, but the {spec.model.variant} engine "
            f"cannot sleep: only {', '.join(sorted(SLEEPERS))} can; send sleepAfter null (the endpoint still scales "
            "to zero after scaleToZeroTimeout)")


def parse_create(body: Any) -> EndpointSpec:
    """`POST /v2/endpoint/{ns}` (§5). Required: what the client always sends with a value (name, type,
    provider.vendor/region, compute.accelerator/instanceType/instanceSize, compute.scaling.min/maxReplica,
    model.repository/framework/image); everything else has a default."""
    return _spec(_object(body, "the request body"), None)


def apply_update(spec: EndpointSpec, body: Any) -> tuple[EndpointSpec, ChangeKind]:
    """Sparse `PUT /v2/endpoint/{ns}/{name}` (§6): the spec with the sent keys changed, and what that
    asks of the replicas. `name` cannot change."""
    body = _object(body, "the request body")
    if body.get("name", spec.name) != spec.name:
        _fail("name", f'"{spec.name}", the name of this endpoint (create a new endpoint to rename it)', body["name"])
    new = _spec(body, spec)
    return new, change_kind(spec, new)


def change_kind(old: EndpointSpec, new: EndpointSpec) -> ChangeKind:
    """What going from `old` to `new` asks of the replicas."""
    if new == old:
        return ChangeKind.NONE
    if new.model != old.model or _hardware(new) != _hardware(old) or _sleep_args(new) != _sleep_args(old):
        return ChangeKind.ROLL
    return ChangeKind.SCALING_ONLY


def _sleep_args(spec: EndpointSpec) -> tuple[bool, int | None]:
    """What of sleepAfter reaches the engine's arguments: whether its sleep mode is on (vLLM's
    --enable-sleep-mode, SGLang's --enable-memory-saver) and, for llama.cpp, which sleeps by
    itself, the seconds (--sleep-idle-seconds): a change of either needs new containers."""
    after = spec.compute.scaling.sleep_after_s
    return after is not None, after if spec.model.variant == "llamacpp" else None


def _hardware(spec: EndpointSpec) -> tuple[str, str, str]:
    return spec.compute.accelerator, spec.compute.instance_type, spec.compute.instance_size


# --- storage and responses ----------------------------------------------------------------------


def spec_to_json(spec: EndpointSpec) -> dict[str, Any]:
    """The spec as a full create body, secrets and registry password included: what the store keeps."""
    scaling, model = spec.compute.scaling, spec.model
    return {
        "name": spec.name,
        "type": spec.type.value,
        "provider": {"vendor": spec.provider.vendor, "region": spec.provider.region},
        "compute": {
            "accelerator": spec.compute.accelerator,
            "instanceType": spec.compute.instance_type,
            "instanceSize": spec.compute.instance_size,
            "scaling": {
                "minReplica": scaling.min_replica,
                "maxReplica": scaling.max_replica,
                "scaleToZeroTimeout": scaling.scale_to_zero_timeout_min,
                "sleepAfter": scaling.sleep_after_s,
                "measure": {scaling.measure.metric.value: scaling.measure.threshold},
                "metric": scaling.measure.metric.value,
            },
        },
        "model": {
            "repository": model.repository,
            "framework": model.framework,
            "revision": model.revision,
            "task": model.task,
            "image": copy.deepcopy(model.image),
            "command": None if model.command is None else list(model.command),
            "args": None if model.args is None else list(model.args),
            "env": dict(model.env),
            "secrets": dict(model.secrets),
            "downloadPattern": None if model.download_pattern is None else list(model.download_pattern),
        },
        "route": {"domain": spec.route.domain, "path": spec.route.path},
        "privateService": copy.deepcopy(spec.private_service),
        "cacheHttpResponses": spec.cache_http_responses,
        "tags": list(spec.tags),
    }


def spec_from_json(data: dict[str, Any]) -> EndpointSpec:
    """Read back `spec_to_json`: the stored form is a create body, so the same checks guard both doors."""
    return parse_create(data)


def render_endpoint(spec: EndpointSpec, status: StatusView) -> dict[str, Any]:
    """`EndpointWithStatus` (§7). No secrets; a custom image's registry credentials keep only the username,
    since a password marker sent back in a PUT of `model.image` would become the password."""
    body = spec_to_json(spec)
    del body["model"]["secrets"]
    body["model"]["image"] = spec.model.public_image
    body["healthRoute"] = spec.health_route
    body["status"] = {
        "state": status.state.value,
        "message": status.message,
        "createdAt": wire_time(status.created_at),
        "updatedAt": wire_time(status.updated_at),
        "readyReplica": status.ready_replica,
        "targetReplica": status.target_replica,
    }
    if status.url is not None:
        body["status"]["url"] = status.url
    if status.error_message is not None:
        body["status"]["errorMessage"] = status.error_message
    if status.tier is not None:
        body["status"]["tier"] = status.tier
    return body


def render_list(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`GET /v2/endpoint/{ns}`: one page with everything; the client ignores cursors (§12)."""
    return {"items": list(items)}


def render_provider(offers: list[ComputeOffer]) -> dict[str, Any]:
    """`GET /v2/provider/{ns}` (§9): this host as one vendor with one region."""
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
    """What an audit entry records of a spec: enough to see what changed, never a secret's value."""
    compute, scaling = spec.compute, spec.compute.scaling
    return {
        "repository": spec.model.repository, "revision": spec.model.revision, "image": spec.model.variant,
        "instance": f"{compute.accelerator}/{compute.instance_type}/{compute.instance_size}",
        "replicas": [scaling.min_replica, scaling.max_replica], "type": spec.type.value,
        "env": sorted(spec.model.env), "secrets": sorted(spec.model.secrets),
    }
