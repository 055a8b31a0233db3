"""The control plane's configuration (`endpointd serve`); the proxy's is proxy/core/config.py."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoscaler.model import settings
from autoscaler.model.usage import Rates
from autoscaler.scaling.policy import PolicyConfig
from proxy.core.config import setting


@dataclass(frozen=True)
class ServeConfig:
    data_dir: str = setting("./endpointd-data", help="where the SQLite store, the admin token and model files live")
    external_url: str = setting(
        "", help="base URL handed out in endpoint URLs (default http://HOST:PORT)",
    )
    model_roots: tuple[str, ...] = setting(
        (), help="directories under which local model repositories may be (default DATA_DIR/models)",
    )
    max_replicas_per_endpoint: int = setting(
        # Far more than one host runs usefully, and a bound on what a crafted maxReplica can ask.
        32, min=1, max=1000, help="the largest maxReplica an endpoint may ask for",
    )
    cpu_overcommit: float = setting(
        # 1.0: the CPUs and memory that replicas' limits add up to never exceed the host's.
        1.0, min=0.1, max=64.0, help="how many times the host's CPUs and memory replicas' limits may add up to",
    )
    publish_host: str = setting(
        "127.0.0.1", help="host address engine ports are published on; the proxy reaches replicas there",
    )
    ready_deadline_s: float = setting(
        # Large models take minutes to load onto GPUs; the reference service waits this long too.
        1800.0, min=1.0, max=86_400.0, help="time a new replica has to answer its health route",
    )
    drain_grace_s: float = setting(
        # Long enough for a long generation to finish streaming before its replica is stopped.
        300.0, min=0.0, max=86_400.0, help="time a replica being removed gets to finish its requests",
    )
    stop_grace_s: float = setting(
        10.0, min=0.0, max=3600.0, help="time between SIGTERM and SIGKILL when stopping a container",
    )
    liveness_interval_s: float = setting(
        # Three checks 5 s apart: a hung engine is out of rotation within ~15 s, while one slow
        # answer from a busy engine is not enough to replace it.
        5.0, min=0.1, max=3600.0, help="how often a ready replica's health route is checked; a check not answered within it fails",
    )
    liveness_failures: int = setting(
        3, min=1, max=100, help="failed health checks in a row before a ready replica is replaced",
    )
    sweep_interval_s: float = setting(
        10.0, min=0.1, max=86_400.0, help="how often containers no replica owns (orphans) are looked for and stopped",
    )
    park_ttl_s: float = setting(
        # An hour: a team that comes back after lunch gets a docker start, not a new container;
        # a stopped container costs only its disk layer, and its page cache is the kernel's to drop.
        3600.0, min=0.0, max=30 * 86_400.0,
        help="an endpoint at zero keeps its stopped containers this long, so that a wake starts one "
        "again instead of creating it; 0: remove them at zero",
    )
    reconcile_interval_s: float = setting(
        1.0, min=0.01, max=60.0, help="longest time between two reconcile rounds (changes trigger one at once)",
    )
    catalog_files: tuple[str, ...] = setting(
        (), help="TOML files of inference-catalog recipes, added to the shipped ones (format: autoscaler/model/catalog.toml)",
    )


@dataclass(frozen=True)
class ScalingConfig:
    """The scaling loop's windows and cadences (reference defaults); tests shorten them."""

    scale_window_s: float = setting(20.0, min=0.1, max=3600.0, help="pending requests are averaged over this window")
    hardware_window_s: float = setting(60.0, min=0.1, max=3600.0, help="utilization is averaged over this window")
    hardware_up_every_s: float = setting(60.0, min=0.1, max=3600.0, help="hardware strategy: scale-up evaluated this often")
    hardware_down_every_s: float = setting(120.0, min=0.1, max=7200.0, help="hardware strategy: scale-down evaluated this often")
    stabilization_s: float = setting(
        300.0, min=0.0, max=86_400.0, help="scale down only to the highest recommendation of this window",
    )
    minute_s: float = setting(
        60.0, min=0.01, max=60.0, help="seconds in a scaleToZeroTimeout minute (shorten for tests)",
    )
    scale_interval_s: float = setting(1.0, min=0.05, max=60.0, help="how often pending counts are sampled and decided on")

    def policy(self) -> PolicyConfig:
        return PolicyConfig(
            window_s=self.scale_window_s, hardware_window_s=self.hardware_window_s,
            hardware_up_every_s=self.hardware_up_every_s, hardware_down_every_s=self.hardware_down_every_s,
            stabilization_s=self.stabilization_s, minute_s=self.minute_s,
        )


# A Docker image reference: repository[:tag][@digest], no spaces; Docker caps a name at 255 characters.
IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
ENGINE_ENV_PREFIX = settings.ENV_PREFIX + "ENGINE_IMAGE_"  # ENDPOINTD_ENGINE_IMAGE_VLLM, …_LLAMACPP_GPU


@dataclass(frozen=True)
class EnginesConfig:
    """`[engines]`: the image each engine preset runs, pinned by the operator (`vllm =
    "vllm/vllm-openai:v0.8.5"`). Keys are presets.DEFAULT_IMAGES' (any case: `vllm` is `vLLM`);
    what is not given keeps the preset's default. Env ENDPOINTD_ENGINE_IMAGE_<KEY> ('-' as '_'), flag
    `--engine-image KEY=IMAGE` (repeatable)."""

    images: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, *, file_values: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
             flags: list[str] | None = None) -> EnginesConfig:
        from engines.presets import DEFAULT_IMAGES

        keys = {key.lower(): key for key in DEFAULT_IMAGES}
        env_keys = {ENGINE_ENV_PREFIX + key.upper().replace("-", "_"): key for key in DEFAULT_IMAGES}
        layers: list[tuple[str, Any, str]] = []
        for key, value in (file_values or {}).items():
            layers.append((key, value, "the config file [engines]"))
        environment = env or {}
        for name, key in env_keys.items():
            if environment.get(name):
                layers.append((key, environment[name], name))
        for item in flags or ():
            key, sep, value = item.partition("=")
            if not sep:
                raise settings.SettingsError(f"--engine-image {item!r} is invalid: it must be KEY=IMAGE, e.g. vllm=vllm/vllm-openai:v0.8.5")
            layers.append((key, value, "--engine-image"))
        images: dict[str, str] = {}
        for key, value, source in layers:
            known = keys.get(str(key).lower())
            if known is None:
                raise settings.SettingsError(
                    f"unknown key engines.{key} (from {source}); valid keys: {', '.join(DEFAULT_IMAGES)}")
            if not isinstance(value, str) or not IMAGE_REF.fullmatch(value):
                raise settings.SettingsError(
                    f"engines.{key} = {value!r} (from {source}) is invalid: it must be an image reference such as "
                    f"\"vllm/vllm-openai:v0.8.5\" (no spaces, at most 255 characters)")
            images[known] = value
        return cls(images)


RATES_ENV = settings.ENV_PREFIX + "RATES"  # ENDPOINTD_RATES="intel-icl=0.12,nvidia-l4=0.8"
# An instance type as `compute.instanceType` names one (intel-icl, nvidia-l4, nvidia-a100-80gb).
INSTANCE_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_RATE = 1_000_000.0  # per hour: far above any instance's price, a bound on a typo's damage


def load_rates(*, file_values: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
               flags: list[str] | None = None) -> Rates:
    """`[rates]`: the price per hour of one unit of each instance type (`nvidia-l4 = 0.8`; an xN
    replica is N units), from the config file, then ENDPOINTD_RATES (`TYPE=PRICE,TYPE=PRICE`), then
    `--rate TYPE=PRICE` (repeatable), a later one replacing an earlier one's price of a type.
    Instance types with no rate are unpriced: they cost nothing and usage names them."""
    layers: list[tuple[str, Any, str]] = [(key, value, "the config file [rates]") for key, value in (file_values or {}).items()]
    for item in filter(None, (part.strip() for part in (env or {}).get(RATES_ENV, "").split(","))):
        layers.append((*_pair(item, RATES_ENV), RATES_ENV))
    for item in flags or ():
        layers.append((*_pair(item, "--rate"), "--rate"))
    prices: dict[str, float] = {}
    for key, value, source in layers:
        if not isinstance(key, str) or not INSTANCE_TYPE.fullmatch(key):
            raise settings.SettingsError(
                f"rates.{key} (from {source}) is not an instance type: it must be 1 to 64 letters, digits, '.', '_' or '-', "
                "e.g. nvidia-l4")
        try:
            price = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            price = None
        if price is None or not math.isfinite(price) or not 0 <= price <= MAX_RATE:
            raise settings.SettingsError(
                f"rates.{key} = {value!r} (from {source}) is invalid: it must be a price per hour, a number between 0 and "
                f"{MAX_RATE:g}")
        prices[key] = price
    return Rates(prices)


def _pair(item: str, source: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise settings.SettingsError(f"{source} {item!r} is invalid: it must be TYPE=PRICE, e.g. nvidia-l4=0.8")
    return key.strip(), value.strip()
