"""An endpoint as its owner declared it: frozen dataclasses, units in the field names."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from proxy.core.control import AuthType
from proxy.core.engine_routes import EngineKind

# Every engine this project runs (TGI, TEI, vLLM, SGLang, llama.cpp, the inference toolkit, the
# echo engine) answers GET /health; the client needs *some* string here.
DEFAULT_HEALTH_ROUTE = "/health"


class ScalingMetric(enum.StrEnum):
    """What `compute.scaling.measure` is keyed by: the metric the scaling policy reads."""

    PENDING_REQUESTS = "pendingRequests"  # requests in flight or held, per replica
    HARDWARE_USAGE = "hardwareUsage"  # percent of the accelerator in use
    ENGINE_QUEUE = "engineQueue"  # requests running + waiting in the engines, per replica (their metrics)


@dataclass(frozen=True)
class Measure:
    metric: ScalingMetric
    threshold: float  # requests per replica (pending, or in the engine), or percent for hardwareUsage


@dataclass(frozen=True)
class Scaling:
    min_replica: int
    max_replica: int
    scale_to_zero_timeout_min: int | None  # set exactly when min_replica is 0: idle minutes before scaling to zero
    measure: Measure
    # Idle seconds before the replicas' engines sleep (process alive, model memory released; the
    # next request wakes them without a 503); None: never. Only engines in SLEEPERS can.
    sleep_after_s: int | None = None


@dataclass(frozen=True)
class Compute:
    accelerator: str  # "cpu" or "gpu"
    instance_type: str
    instance_size: str  # "x1", "x2", ...
    scaling: Scaling


# The image variants whose engine serves control routes (proxy/core/engine_routes.py).
ENGINES = {"vLLM": EngineKind.VLLM, "sGLang": EngineKind.SGLANG, "llamacpp": EngineKind.LLAMACPP}
# The image variants whose engine can sleep (engines/sleep.py's KINDS, which a test keeps equal;
# not imported: the CLI loads this module and must not load aiohttp): `compute.scaling.sleepAfter`
# is refused for the others.
SLEEPERS = frozenset(ENGINES)


@dataclass(frozen=True, repr=False)
class Model:
    """The dicts are copies of the request's, owned by this object: read them, never mutate them."""

    repository: str  # a Hub repository id or a local directory
    framework: str
    revision: str | None  # once created: the commit it runs (Hub), or "sha256:..." (a local directory's content)
    task: str | None
    image: dict[str, Any]  # exactly one variant: {"tgi": {...}}, {"custom": {"url": ..., "credentials": ...}}, ...
    command: tuple[str, ...] | None
    args: tuple[str, ...] | None
    env: dict[str, str]
    secrets: dict[str, str]  # never rendered, never in repr
    # What artifacts.fetch downloads (snapshot_download's allow_patterns); None: every file. Computed
    # at create from the engine and the framework (artifacts.download_pattern) unless given.
    download_pattern: tuple[str, ...] | None = None

    @property
    def variant(self) -> str:
        return next(iter(self.image))

    @property
    def engine(self) -> EngineKind:
        """What its variant runs, for the proxy to close that engine's control routes; a custom
        image is OTHER whatever it runs (its routes are its own)."""
        return ENGINES.get(self.variant, EngineKind.OTHER)

    @property
    def public_image(self) -> dict[str, Any]:
        """`image` without the registry password: what responses, logs and reprs may show."""
        options = dict(self.image[self.variant])
        if "credentials" in options:
            options["credentials"] = {k: v for k, v in options["credentials"].items() if k != "password"}
        return {self.variant: options}

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown |= {"image": self.public_image, "secrets": sorted(self.secrets)}  # secret names only
        return f"Model({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass(frozen=True)
class Provider:
    vendor: str  # recorded as given: this host is the only place it runs
    region: str


@dataclass(frozen=True)
class Route:
    domain: str | None = None  # Host-based routing in the proxy, lowercased
    path: str | None = None


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    type: AuthType
    provider: Provider
    compute: Compute
    model: Model
    route: Route
    private_service: dict[str, Any] | None  # recorded as given; nothing on this host acts on it
    cache_http_responses: bool | None
    tags: tuple[str, ...]

    @property
    def health_route(self) -> str:
        """The image variant's `healthRoute` (or the 2023 spec's `health_route`), else /health;
        `/` for a custom image that names none (it is ready once its port listens, and the
        client's `wait()` then asks for the endpoint's root, the one route any server has)."""
        options = self.model.image[self.model.variant]
        declared = options.get("healthRoute") or options.get("health_route")
        if declared:
            return declared
        return "/" if self.model.variant == "custom" else DEFAULT_HEALTH_ROUTE
