"""The scaling decision, as a pure function: `decide(snapshot, scaling, config, state, now)`.

No clock, no Docker, no I/O: time comes in as `now` (seconds, monotonic), history lives in the
returned `PolicyState`, and tests run it as tables. Defaults are the reference service's:
- pending requests (default): add replicas when the average pending per ready replica over the
  last 20 s exceeds the threshold (1.5), up to the count that brings it under the threshold;
- engine queue: the same arithmetic on what the engines themselves report as running plus
  waiting (llama.cpp, vLLM, TGI, SGLang metrics), summed over the ready replicas; where no engine
  figure is known yet, the proxy's pending count stands in for it;
- hardware: average utilization over a 1-minute window >= threshold (80 %) adds a replica,
  evaluated every minute; scale-down evaluated every 2 minutes;
- scale-down only after a 300 s stabilization: the highest recommendation over it wins;
- scale to zero when min is 0 and nothing was pending or arrived for the idle timeout; at zero,
  stay there (a wake is not the policy's to decide);
- sleep: idle for sleepAfter seconds with replicas kept, the decision says their engines may sleep;
- no scale-down before a full stabilization window has been seen (after a restart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from autoscaler.model.spec import ScalingMetric


@dataclass(frozen=True)
class PolicyConfig:
    window_s: float = 20.0  # pending-requests averaging window
    hardware_window_s: float = 60.0  # utilization averaging window
    hardware_up_every_s: float = 60.0
    hardware_down_every_s: float = 120.0
    stabilization_s: float = 300.0
    minute_s: float = 60.0  # length of the scaleToZeroTimeout unit; tests shorten it


@dataclass(frozen=True)
class PolicyScaling:
    """One endpoint's scaling settings as the policy reads them (parts.scaling_of makes them from
    the spec's model.spec.Scaling: plural counts, the idle timeout resolved)."""

    min_replicas: int
    max_replicas: int
    metric: ScalingMetric = ScalingMetric.PENDING_REQUESTS
    threshold: float = 1.5
    idle_timeout_min: float | None = None  # None: never to zero (min > 0)
    sleep_after_s: float | None = None  # idle seconds before the engines may sleep; None: never


@dataclass(frozen=True)
class Snapshot:
    """What is true now, for one endpoint."""

    pending: int  # held + in flight, across its replicas
    arrivals: int  # requests admitted since the proxy started (monotonic counter)
    ready: int  # replicas taking requests
    current: int  # replicas wanted now (the controller's target)
    utilization: float | None = None  # percent, averaged over replicas (CPU or GPU)
    capacity: int | None = None  # most replicas that can be placed now; None: unbounded
    engine_load: float | None = None  # running + waiting as the ready replicas' engines report it


@dataclass(frozen=True)
class PolicyState:
    started_at: float | None = None
    samples: tuple[tuple[float, float, float | None, float], ...] = ()  # (t, pending, util, load)
    recommendations: tuple[tuple[float, int], ...] = ()  # (t, replicas)
    last_active_at: float | None = None
    last_arrivals: int | None = None
    last_up_at: float | None = None  # hardware cadence
    last_down_at: float | None = None


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    inputs: dict = field(default_factory=dict)
    wanted_beyond_capacity: int | None = None  # replicas wanted when capacity capped the decision
    # Idle for sleepAfter while replicas stay: their engines may sleep (the owner puts them to
    # sleep; the next request wakes them).
    sleep: bool = False
    kind: str = "steady"  # a short label for metrics: up, down, steady, stabilizing, warmup, idle, at_zero, capacity


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def decide(snapshot: Snapshot, scaling: PolicyScaling, config: PolicyConfig, state: PolicyState, now: float) -> tuple[Decision, PolicyState]:
    started = state.started_at if state.started_at is not None else now
    active = snapshot.pending > 0 or (state.last_arrivals is not None and snapshot.arrivals != state.last_arrivals)
    last_active = now if active or state.last_active_at is None else state.last_active_at
    per_ready = snapshot.pending / max(snapshot.ready, 1)
    keep_from = now - max(config.window_s, config.hardware_window_s)
    load = snapshot.engine_load if snapshot.engine_load is not None else float(snapshot.pending)
    samples = tuple(s for s in state.samples if s[0] > keep_from) + ((now, snapshot.pending, snapshot.utilization, load),)
    state = replace(state, started_at=started, samples=samples, last_active_at=last_active, last_arrivals=snapshot.arrivals)
    current = snapshot.current
    inputs: dict = {"pending": snapshot.pending, "ready": snapshot.ready, "current": current, "per_ready": round(per_ready, 3)}

    # 1. What the metric asks for (a recommendation, before bounds and stabilization).
    if scaling.metric is ScalingMetric.HARDWARE_USAGE:
        utils = [u for t, _, u, _ in samples if u is not None and t > now - config.hardware_window_s]
        util = _mean(utils)
        inputs["utilization"] = round(util, 1)
        recommended, reason = current, "steady"
        if utils and util >= scaling.threshold and (state.last_up_at is None or now - state.last_up_at >= config.hardware_up_every_s):
            recommended, reason = max(current, 1) + 1, f"utilization {util:.0f}% >= {scaling.threshold:g}%"
            state = replace(state, last_up_at=now)
        elif utils and util < scaling.threshold and (state.last_down_at is None or now - state.last_down_at >= config.hardware_down_every_s):
            recommended = max(1, math.ceil(max(current, 1) * util / scaling.threshold))
            reason = f"utilization {util:.0f}% < {scaling.threshold:g}%"
            state = replace(state, last_down_at=now)
    else:
        engine = scaling.metric is ScalingMetric.ENGINE_QUEUE
        window = [load if engine else p for t, p, _, load in samples if t > now - config.window_s]
        average = _mean(window)
        what = "engine running + waiting" if engine else "pending"
        inputs["avg_engine_load" if engine else "avg_pending"] = round(average, 3)
        if engine:
            inputs["engine_reported"] = snapshot.engine_load is not None
        # The fewest replicas that keep the average per replica at or under the threshold.
        recommended = max(1, math.ceil(average / scaling.threshold)) if average > 0 else 1
        reason = f"average {what} {average:.2f} over {config.window_s:g} s, threshold {scaling.threshold:g}/replica"

    # 2. Bounds.
    floor = max(scaling.min_replicas, 1)
    recommended = min(max(recommended, floor), scaling.max_replicas)
    history = tuple(r for r in state.recommendations if r[0] > now - config.stabilization_s) + ((now, recommended),)
    state = replace(state, recommendations=history)

    # 3. Up at once; down only to the highest recommendation of the stabilization window, and
    #    never before a full window has been seen.
    if recommended > current:
        target, why, kind = recommended, f"scale up: {reason}", "up"
    elif recommended < current:
        if now - started < config.stabilization_s:
            target, why, kind = current, "no scale-down before a full stabilization window of data", "warmup"
        else:
            target = max(r for _, r in history)
            if target < current:
                why, kind = f"scale down: {reason}", "down"
            else:
                why, kind = "stabilizing: a higher recommendation is in the window", "stabilizing"
    else:
        target, why, kind = current, f"steady: {reason}", "steady"

    # 4. At zero (idle timeout, or a user's scale-to-zero) it stays there: only a request that
    #    finds no replica wakes it, through the proxy and the endpoint's owner, not a
    #    recommendation. Scale to zero after the idle timeout (an open stream is pending, so not idle).
    idle_s = now - last_active
    inputs["idle_s"] = round(idle_s, 1)
    if current == 0:
        target, why, kind = 0, "at zero until a request wakes it", "at_zero"
    elif (scaling.min_replicas == 0 and scaling.idle_timeout_min is not None
          and idle_s >= scaling.idle_timeout_min * config.minute_s and now - started >= config.window_s):
        target, why, kind = 0, f"idle for {idle_s:.0f} s >= scaleToZeroTimeout", "idle"

    # 5. Sleep: idle long enough, replicas kept (not going to zero now), and nothing pending.
    sleep = (scaling.sleep_after_s is not None and target > 0 and current > 0 and snapshot.pending == 0
             and idle_s >= scaling.sleep_after_s)
    if sleep:
        why = f"{why}; idle for {idle_s:.0f} s >= sleepAfter: the engines may sleep"

    # 6. Capacity: never more than can be placed now.
    if snapshot.capacity is not None and target > snapshot.capacity >= current:
        wanted = target
        target, why = snapshot.capacity, f"{why}; capped at capacity {snapshot.capacity}"
        return Decision(target, why, inputs, wanted_beyond_capacity=wanted, sleep=sleep, kind="capacity"), state
    return Decision(target, why, inputs, sleep=sleep, kind=kind), state
