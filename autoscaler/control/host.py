"""What an owner needs from outside itself: the `Launcher` that starts, sleeps, wakes and parks
replicas, and the `Host` (the controller) around it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from autoscaler.control.messages import Failure
from autoscaler.model.events import EventLog
from autoscaler.model.intent import Intent, Signals
from autoscaler.model.state import Status
from autoscaler.model.timelines import ReplicaHistory
from engines.capacity import Need
from engines.runtime import ReplicaInfo, Runtime
from proxy.core.control import RouteTable

T = TypeVar("T")


class Launcher(Protocol):
    def needs(self, intent: Intent) -> Need:
        """What one replica holds while it exists: GPUs, CPUs, memory."""

    async def launch(
        self, intent: Intent, replica_id: str, gpus: tuple[str, ...], report: Callable[[str], None],
        mark: Callable[[str], None],
    ) -> ReplicaInfo:
        """Prepare (artifacts, image), start the container with these GPUs and wait until it
        answers its health route; raise on failure. Cancellable at any point. `mark(point)` at
        "creating", "created" and "started" (wakes.py times a wake's phases by them)."""

    async def unpark(
        self, intent: Intent, replica_id: str, report: Callable[[str], None], mark: Callable[[str], None],
    ) -> ReplicaInfo:
        """Start a parked (stopped, kept) container again and wait until it answers its health
        route; raise on failure. `mark("started")` once it runs."""

    async def healthy(self, replica: ReplicaInfo) -> bool:
        """Whether a running replica answers its health route with 200 now."""

    def sleeps_by_itself(self, intent: Intent) -> bool:
        """Whether the endpoint's engine sleeps on its own idle timer (llama.cpp), which endpointd
        only observes; else endpointd puts it to sleep and wakes it."""

    async def sleep(self, intent: Intent, replica: ReplicaInfo) -> None:
        """Put the replica's engine to sleep (its model memory released); raise on failure."""

    async def wake(self, intent: Intent, replica: ReplicaInfo, mark: Callable[[str], None]) -> None:
        """Wake the replica's engine and wait until it answers again; raise on failure.
        `mark("awake")` when the engine's wake call returned."""

    async def is_sleeping(self, intent: Intent, replica: ReplicaInfo) -> bool | None:
        """Whether the engine says it is asleep now; None when it cannot say."""


class Host(Protocol):
    """What an owner needs from the controller around it."""

    runtime: Runtime
    launcher: Launcher
    routes: RouteTable
    events: EventLog
    drain_grace_s: float
    stop_grace_s: float
    liveness_failures: int
    park_ttl_s: float  # parked containers are removed after this; 0: never park

    def clock(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...
    def wall(self) -> float: ...
    def new_id(self) -> str: ...
    def kick(self) -> None: ...
    def spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]: ...
    def in_flight(self, key: str) -> Mapping[str, int]: ...
    def capacity_of(self, intent: Intent) -> tuple[int | None, str]: ...
    def assign_gpus(self, replica_id: str, intent: Intent) -> tuple[str, ...]: ...
    def release_gpus(self, replica_id: str) -> None: ...
    def reassign(self, replica_id: str, intent: Intent, gpus: tuple[str, ...]) -> None: ...
    def gpus_taken(self, replica_id: str, gpus: tuple[str, ...]) -> bool: ...
    async def probe(self, intent: Intent) -> bool: ...
    async def save_status(self, uid: str, status: Status) -> None: ...
    async def save_signals(self, uid: str, signals: Signals) -> None: ...
    def new_history(self, uid: str) -> ReplicaHistory: ...

    async def save_failure(self, uid: str, failure: Failure | None) -> None: ...
