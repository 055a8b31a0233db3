"""The scaling loop: samples each endpoint, asks the policy, hands the answer to the controller.

`tick()` does one round and returns its decisions; `run()` repeats it every `interval_s` of the
injected clock. It only carries decisions out — the arithmetic is in policy.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from engines.runtime import EndpointKey
from proxy.pending import PendingSnapshot

from .controller import Controller
from .policy import HARDWARE, Decision, PolicyConfig, PolicyState, Scaling, Snapshot, decide

log = logging.getLogger("endpointd.scaler")

# The proxy's counts are sampled once a second (the reference service's cadence).
SAMPLE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ScaleEvent:
    key: EndpointKey
    from_replicas: int
    to_replicas: int
    decision: Decision


class Scaler:
    def __init__(
        self,
        controller: Controller,
        pending: Callable[[], PendingSnapshot],
        *,
        config: PolicyConfig,
        scaling_of: Callable[[EndpointKey], Scaling | None],
        on_target: Callable[[EndpointKey, int], Awaitable[None]],
        utilization: Callable[[EndpointKey], Awaitable[float | None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = SAMPLE_INTERVAL_S,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._controller = controller
        self._pending = pending
        self._config = config
        self._scaling_of = scaling_of
        self._on_target = on_target
        self._utilization = utilization
        self._clock = clock
        self._interval_s = interval_s
        self._states: dict[EndpointKey, PolicyState] = {}
        self.events = Counter(
            "endpointd_scale_events", "Scaling decisions that changed an endpoint's replicas, by direction and reason",
            ["endpoint", "direction", "reason"], registry=registry,
        )
        self.decisions = Counter(
            "endpointd_scale_decisions", "Every scaling decision, by kind (up, down, steady, stabilizing, warmup, idle, at_zero, capacity)",
            ["endpoint", "kind"], registry=registry,
        )

    async def tick(self) -> list[ScaleEvent]:
        now = self._clock()
        counts = self._pending()
        changes = []
        for key in self._controller.keys():
            desired = self._controller.desired(key)
            scaling = self._scaling_of(key)
            if desired is None or scaling is None or desired.paused:
                self._states.pop(key, None)
                continue
            name = str(key)
            util = await self._utilization(key) if self._utilization and scaling.metric == HARDWARE else None
            snapshot = Snapshot(
                pending=counts.pending(name),
                arrivals=counts.arrivals.get(name, 0),
                ready=self._controller.ready_count(key),
                current=desired.target,
                utilization=util,
                capacity=self._controller.capacity(key),
            )
            decision, self._states[key] = decide(snapshot, scaling, self._config, self._states.get(key, PolicyState()), now)
            log.debug("%s: %d -> %d (%s) %s", key, desired.target, decision.replicas, decision.reason, decision.inputs)
            self.decisions.labels(name, decision.kind).inc()
            wanted = decision.wanted_beyond_capacity
            self._controller.set_note(
                key, f"wants {wanted} replicas, waiting for capacity: no free GPUs for more" if wanted else ""
            )
            if decision.replicas != desired.target:
                log.info("%s: %d -> %d replicas (%s) %s", key, desired.target, decision.replicas, decision.reason, decision.inputs)
                direction = "up" if decision.replicas > desired.target else "down"
                self.events.labels(name, direction, "idle" if decision.replicas == 0 else scaling.metric).inc()
                self._controller.set_target(key, decision.replicas)
                await self._on_target(key, decision.replicas)
                changes.append(ScaleEvent(key, desired.target, decision.replicas, decision))
        for gone in set(self._states) - set(self._controller.keys()):
            del self._states[gone]
        return changes

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad round must not stop scaling every endpoint
                log.exception("scaling round failed")
            await asyncio.sleep(self._interval_s)
