"""Every wake of an endpoint measured: from the proxy's wake call reaching the controller to the
held requests' release, in phases, and the last few kept per endpoint and tier.

A wake's tier is what it woke from: "sleeping" (the engine's own sleep, process alive), "parked"
(a stopped container started again) or "cold" (a new container). Its points in time, in order:
asked (the wake call reached the controller), then the marks of the replica that answered it —
creating, unparking or waking (its container is about to be made, or started again, or its engine
asked to wake: what came before is endpointd's own preparation), created, started (docker start
or run returned), awake (the engine's wake call returned), ready (readiness passed) — then released (the owner
published it to the route table, which frees the held requests in the same loop turn). Each phase
is named by the point that ends it; a mark the launcher did not give folds its phase into the next.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

# Wakes kept per endpoint: enough for a stable median, small enough to be nothing in memory.
WAKES_KEPT = 20
PHASE_ENDED_BY = {"creating": "prepare", "unparking": "prepare", "waking": "prepare", "created": "create",
                  "started": "start", "awake": "wake", "ready": "ready", "released": "release"}
TIERS = ("sleeping", "parked", "cold")


@dataclass(frozen=True)
class WakeRecord:
    total_s: float
    phases: tuple[tuple[str, float], ...]  # (phase, seconds), in order
    tier: str = "cold"

    def describe(self) -> str:
        """E.g. "woke from cold in 1.23 s: prepare 0.01, create 0.30, start 0.28, ready 0.64, release 0.00"."""
        return f"woke from {self.tier} in {self.total_s:.2f} s: " + ", ".join(f"{name} {s:.2f}" for name, s in self.phases)


def measure(asked: float, marks: Sequence[tuple[str, float]], released: float, tier: str = "cold") -> WakeRecord:
    """The wake from `tier` asked at `asked`, its replica's launch `marks` ((point, time), in
    order), released at `released`: its total and its phases (never negative)."""
    points = [("asked", asked), *((p, t) for p, t in marks if p in PHASE_ENDED_BY), ("released", released)]
    phases = tuple(
        (PHASE_ENDED_BY[point], max(0.0, at - points[i][1])) for i, (point, at) in enumerate(points[1:])
    )
    return WakeRecord(max(0.0, released - asked), phases, tier)


class WakeHistory:
    """An endpoint's last WAKES_KEPT wakes of each tier, oldest first."""

    def __init__(self, kept: int = WAKES_KEPT) -> None:
        self._records: deque[WakeRecord] = deque(maxlen=kept * len(TIERS))
        self._kept = kept

    def add(self, record: WakeRecord) -> None:
        self._records.append(record)
        if sum(r.tier == record.tier for r in self._records) > self._kept:
            self._records.remove(next(r for r in self._records if r.tier == record.tier))

    def items(self) -> list[WakeRecord]:
        return list(self._records)

    def median_s(self, tier: str | None = None) -> float | None:
        """The median total of the kept wakes (of one tier); None before any."""
        totals = [r.total_s for r in self._records if tier is None or r.tier == tier]
        return statistics.median(totals) if totals else None
