"""A replica as its owner holds it (`Slot`), and what one `Owner.step()` started and drained."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from autoscaler.control.planner import Phase
from engines.runtime import ReplicaInfo


@dataclass
class Slot:
    id: str
    revision: int
    phase: Phase
    gpus: tuple[str, ...] = ()
    info: ReplicaInfo | None = None
    task: asyncio.Task[None] | None = None  # its launch, drain wait or stop, while one runs
    liveness_failures: int = 0
    stop_retry_at: float | None = None  # a failed removal is tried again then
    parked_at: float | None = None  # PARKED since (clock)
    unparked: bool = False  # its launch starts its parked container again
    rouse: bool = False  # a wake was asked while it was going to sleep
    sleep_failed: bool = False  # its engine refused to sleep: not asked again until it is busy
    self_asleep: bool = False  # READY, and its engine (which sleeps by itself) said it is asleep


@dataclass(frozen=True)
class StepResult:
    started: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)  # drained or cancelled
