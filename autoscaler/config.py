"""The control plane's configuration (`endpointd serve`); the proxy's is proxy/config.py."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import setting


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
        5.0, min=0.1, max=3600.0, help="how often a ready replica's health route is checked",
    )
    liveness_failures: int = setting(
        3, min=1, max=100, help="failed health checks in a row before a ready replica is replaced",
    )
    sweep_interval_s: float = setting(
        10.0, min=0.1, max=86_400.0, help="how often containers no replica owns (orphans) are looked for and stopped",
    )
    reconcile_interval_s: float = setting(
        1.0, min=0.01, max=60.0, help="longest time between two reconcile rounds (changes trigger one at once)",
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

    def policy(self):
        from .policy import PolicyConfig

        return PolicyConfig(
            window_s=self.scale_window_s, hardware_window_s=self.hardware_window_s,
            hardware_up_every_s=self.hardware_up_every_s, hardware_down_every_s=self.hardware_down_every_s,
            stabilization_s=self.stabilization_s, minute_s=self.minute_s,
        )
