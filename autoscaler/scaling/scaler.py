"""The scaling loop: samples each endpoint, asks the policy, posts the answer to the endpoint's owner.

`tick()` does one round and returns its decisions; `run()` repeats it every `interval_s`. It only
carries decisions out — the arithmetic is in policy.py — and never sets a replica count: the
recommendation is a signal, which the owner combines with the intent (`intent.wanted`). The
demand it sees is the proxy's pending count less what is still in flight on replicas that are
leaving (draining ones are finishing old work, not asking for capacity); the controller's own
probes are never counted by the proxy. A round that fails for one endpoint skips only that one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from autoscaler.control.controller import Controller
from autoscaler.model.events import EventLog
from autoscaler.model.spec import ScalingMetric
from autoscaler.scaling.policy import Decision, PolicyConfig, PolicyScaling, PolicyState, Snapshot, decide
from engines.runtime import EndpointKey
from proxy.core.pending import PendingSnapshot

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
        scaling_of: Callable[[EndpointKey], PolicyScaling | None],
        utilization: Callable[[EndpointKey], Awaitable[float | None]] | None = None,
        engine_load: Callable[[EndpointKey], float | None] | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = SAMPLE_INTERVAL_S,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._controller = controller
        self._pending = pending
        self._config = config
        self._scaling_of = scaling_of
        self._utilization = utilization
        self._engine_load = engine_load
        self._events = events or controller.events
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
        self.failures = Counter(
            "endpointd_scale_failures", "Scaling rounds that failed for one endpoint (it was skipped)",
            ["endpoint"], registry=registry,
        )

    async def tick(self) -> list[ScaleEvent]:
        now = self._clock()
        counts = self._pending()
        changes = []
        keys = self._controller.keys()
        for key in keys:
            try:
                change = await self._decide(key, counts, now)
            except Exception:  # one endpoint's bad data must not stop scaling the others
                log.exception("scaling %s failed; skipping it this round", key)
                self.failures.labels(str(key)).inc()
                continue
            if change is not None:
                changes.append(change)
        for gone in set(self._states) - set(keys):
            del self._states[gone]
        return changes

    async def _decide(self, key: EndpointKey, counts: PendingSnapshot, now: float) -> ScaleEvent | None:
        intent = self._controller.intent(key)
        scaling = self._scaling_of(key)
        if intent is None or scaling is None or intent.paused:
            self._states.pop(key, None)
            return None
        name = str(key)
        util = await self._utilization(key) if self._utilization and scaling.metric is ScalingMetric.HARDWARE_USAGE else None
        load = self._engine_load(key) if self._engine_load and scaling.metric is ScalingMetric.ENGINE_QUEUE else None
        on_leaving = counts.replicas.get(name, {})
        leaving = sum(on_leaving.get(rid, 0) for rid in self._controller.leaving_ids(key))
        current = self._controller.wanted(key)
        snapshot = Snapshot(
            pending=max(0, counts.pending(name) - leaving),
            arrivals=counts.arrivals.get(name, 0),
            ready=self._controller.ready_count(key),
            current=current,
            utilization=util,
            capacity=self._controller.replicas_can_run(key),
            engine_load=load,
        )
        decision, self._states[key] = decide(snapshot, scaling, self._config, self._states.get(key, PolicyState()), now)
        self.decisions.labels(name, decision.kind).inc()
        intent_uid = intent.uid
        self._events.decision(intent_uid, decision.kind, decision.replicas, decision.reason, decision.inputs)
        self._controller.recommend(key, decision.replicas, decision.reason, decision.wanted_beyond_capacity,
                                   sleep=decision.sleep)
        if decision.replicas == current or current == 0:
            return None  # at zero the owner listens to wakes only, not to recommendations
        log.info("%s: %d -> %d replicas (%s) %s", key, current, decision.replicas, decision.reason, decision.inputs)
        direction = "up" if decision.replicas > current else "down"
        self.events.labels(name, direction, "idle" if decision.replicas == 0 else scaling.metric).inc()
        return ScaleEvent(key, current, decision.replicas, decision)

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._interval_s)
