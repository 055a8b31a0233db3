"""The control plane's event log: every lifecycle step and scaling decision, in one place.

Bounded: the latest `PER_ENDPOINT` events of each endpoint, none older than `KEEP_S`, forgotten
with the endpoint. A scaling decision that repeats the previous one of its endpoint (same kind and
replicas, e.g. "steady" every second) is not recorded again; its first occurrence is. `EventLog`
keeps them in memory (tests, tools); `journal.StoredEventLog`, what `endpointd serve` uses, keeps
them in the store, where they and their cursor survive a restart. Read with `await read(...)`.
"""

from __future__ import annotations

import builtins
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Enough to explain weeks of a busy endpoint (a scaling decision is recorded only when it changes);
# a few MB per endpoint at most.
PER_ENDPOINT = 10_000
KEEP_S = 30 * 24 * 3600.0


@dataclass(frozen=True)
class Event:
    seq: int  # increasing across the log (and, when stored, across restarts): a cursor for "since"
    at: float  # wall-clock seconds
    endpoint: str
    kind: str  # e.g. replica_started, replica_ready, replica_stopped, scale_up, idle, ...
    reason: str
    replica: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)


class EventLog:
    def __init__(self, per_endpoint: int = PER_ENDPOINT, wall: Callable[[], float] = time.time) -> None:
        self._per_endpoint = per_endpoint
        self._wall = wall
        self._events: dict[str, deque[Event]] = {}
        self._last_decision: dict[str, tuple[str, int]] = {}
        self._seq = itertools.count(1)

    def record(self, endpoint: str, kind: str, reason: str, *, replica: str | None = None, **inputs: Any) -> Event:
        event = Event(next(self._seq), self._wall(), endpoint, kind, reason, replica, inputs)
        self._events.setdefault(endpoint, deque(maxlen=self._per_endpoint)).append(event)
        return event

    def decision(self, endpoint: str, kind: str, replicas: int, reason: str, inputs: dict[str, Any]) -> Event | None:
        """A scaling decision; None when it repeats the endpoint's previous one."""
        if self._last_decision.get(endpoint) == (kind, replicas):
            return None
        self._last_decision[endpoint] = (kind, replicas)
        return self.record(endpoint, f"scaling_{kind}", reason, replicas=replicas, **inputs)

    def list(self, endpoint: str, since: int = 0, limit: int = 100) -> list[Event]:
        """The endpoint's events after `since` (a seq), oldest first, at most the latest `limit`."""
        events = [e for e in self._events.get(endpoint, ()) if e.seq > since]
        return events[-limit:] if limit > 0 else []

    async def read(self, endpoint: str, since: int = 0, limit: int = 100) -> builtins.list[Event]:
        """As `list`: what the events route calls (a stored log reads the store)."""
        return self.list(endpoint, since, limit)

    def forget(self, endpoint: str) -> None:
        self._events.pop(endpoint, None)
        self._last_decision.pop(endpoint, None)
