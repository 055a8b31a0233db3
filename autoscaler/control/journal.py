"""What the control plane remembers of each endpoint across restarts: its events and its
replicas' timelines, written behind to the store.

Owners record synchronously (a step never waits on the disk): the journal queues what they
record, and `run()` writes it as soon as it can, a batch per transaction. A read of the events
first writes what is queued, so it sees every event recorded before it; an event's id, its
cursor, is the store's (AUTOINCREMENT), so it keeps increasing across restarts and a reader's
`since` stays valid. A SIGTERM writes what is queued before the store closes; a SIGKILL loses
what was recorded since the last write (milliseconds). The bounds are the store's to enforce
(events.PER_ENDPOINT and KEEP_S, replicas.MAX_STOPPED and KEEP_STOPPED_S).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Callable
from typing import Any

from autoscaler.model.events import Event, EventLog
from autoscaler.model.timelines import ReplicaHistory, ReplicaRecord, from_json, to_json
from autoscaler.store.store import Store

log = logging.getLogger("endpointd.journal")

# Events queued while the store cannot keep up (or fails): beyond this the oldest are dropped.
MAX_QUEUED = 10_000


class Journal:
    def __init__(self, store: Store, wall: Callable[[], float] = time.time) -> None:
        self._store = store
        self._wall = wall
        self._events: list[Event] = []
        self._replicas: dict[tuple[str, str], dict[str, Any]] = {}  # the latest of each replica
        self._forget: list[str] = []
        self._kept: dict[str, list[dict[str, Any]]] = {}
        self._queued = asyncio.Event()
        self._writing = asyncio.Lock()
        self.events = StoredEventLog(self, wall)

    async def load(self) -> None:
        """Read what was kept of the replicas, before the owners are made (`history`)."""
        self._kept = await self._store.load_replicas()

    def history(self, uid: str) -> ReplicaHistory:
        """The replica history of an endpoint incarnation: what was kept, and kept from now on."""
        records = [from_json(data) for data in self._kept.pop(uid, [])]
        return ReplicaHistory(self._wall, records, on_change=lambda record: self._replica(uid, record))

    def event(self, event: Event) -> None:
        self._events.append(event)
        if len(self._events) > MAX_QUEUED:
            del self._events[: len(self._events) - MAX_QUEUED]
        self._queued.set()

    def _replica(self, uid: str, record: ReplicaRecord) -> None:
        self._replicas[(uid, record.id)] = to_json(record)
        self._queued.set()

    def forget(self, uid: str) -> None:
        self._forget.append(uid)
        self._queued.set()

    async def flush(self) -> None:
        """Write what is queued (a failure is logged, and that batch dropped: the store is bounded,
        the queue must be too)."""
        async with self._writing:
            events, replicas, forget = self._events, self._replicas, self._forget
            self._events, self._replicas, self._forget = [], {}, []
            if not (events or replicas or forget):
                return
            try:
                await self._store.write_journal(events, [(uid, data) for (uid, _), data in replicas.items()], forget)
            except Exception:  # noqa: BLE001 - the control plane goes on without its journal
                log.exception("could not keep %d event(s) and %d replica change(s)", len(events), len(replicas))

    async def read_events(self, uid: str, since: int, limit: int) -> list[Event]:
        await self.flush()
        return await self._store.list_events(uid, since, limit)

    async def run(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            # Shielded: a shutdown cancels this loop, not a batch half-written (the final flush
            # waits for it, then writes the rest).
            await asyncio.shield(self.flush())


class StoredEventLog(EventLog):
    """The event log in the store (through the journal): read it with `await read(...)`."""

    def __init__(self, journal: Journal, wall: Callable[[], float]) -> None:
        super().__init__(wall=wall)
        self._journal = journal

    def record(self, endpoint: str, kind: str, reason: str, *, replica: str | None = None, **inputs: Any) -> Event:
        event = Event(0, self._wall(), endpoint, kind, reason, replica, inputs)  # its id comes from the store
        self._journal.event(event)
        return event

    def list(self, endpoint: str, since: int = 0, limit: int = 100) -> builtins.list[Event]:
        raise TypeError("the events are in the store: await read(...)")

    async def read(self, endpoint: str, since: int = 0, limit: int = 100) -> builtins.list[Event]:
        return await self._journal.read_events(endpoint, since, limit)

    def forget(self, endpoint: str) -> None:
        super().forget(endpoint)
        self._journal.forget(endpoint)
