"""The one place pending requests are counted: the scaling signal and the balancing signal.

A request is pending from the moment it passes auth until its response body is complete:
held, queued, in flight and streaming all count. Counting goes through `Ticket`, a context
manager whose exit runs in `finally`, so errors, timeouts and cancellations (client
disconnects) can never leak a count. Everything here runs on the event loop thread, so the
plain dict updates below are atomic with respect to each other.

With worker processes (proxy/workers/), each worker counts its own requests and reports its
snapshot to the main process, whose counter adds them (`set_remote`): `snapshot()` and
`replica_loads()` there are the sums over every process (the scaling signal, the drain's wait),
while the balancer reads `local_loads()`, this process's own live counts.

Only demand is counted: the control plane's own health probe gets an `Uncounted` ticket, so it
is never pending, never an arrival and never on a replica's load — a probe of an endpoint at
zero must not look like a client wanting it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PendingSnapshot:
    """A copy of the counts, for the control plane and the metrics collector."""

    endpoints: dict[str, int]  # endpoint key -> pending (held + in flight)
    replicas: dict[str, dict[str, int]]  # endpoint key -> replica id -> in flight
    arrivals: dict[str, int]  # endpoint key -> requests admitted since start (monotonic)

    def pending(self, key: str) -> int:
        return self.endpoints.get(key, 0)


class PendingCounter:
    def __init__(self) -> None:
        self._endpoints: dict[str, int] = {}
        self._replicas: dict[str, dict[str, int]] = {}
        self._arrivals: dict[str, int] = {}
        self.changes = 0  # bumped on every count change: a reporter sends only when it moved
        # Called when a replica goes from 0 to 1 request here (a worker reports it at once, so a
        # drain in the main process cannot miss it); None: nobody listens.
        self.on_first_bind: Callable[[], None] | None = None
        self._remote: dict[str, PendingSnapshot] = {}  # worker id -> its last snapshot
        self._gone_arrivals: dict[str, int] = {}  # arrivals of workers that exited: they stay counted

    def track(self, key: str, demand: bool = True) -> Ticket:
        """One request's ticket; `demand=False` (the control plane's probe) counts nothing."""
        return Ticket(self, key) if demand else Uncounted(self, key)

    def local_loads(self, key: str) -> dict[str, int]:
        """Live (not copied) in-flight counts per replica of one endpoint in this process, for the balancer."""
        return self._replicas.get(key) or {}

    def replica_loads(self, key: str) -> dict[str, int]:
        """In-flight counts per replica of one endpoint over every process (a drain waits for 0)."""
        local = self._replicas.get(key) or {}
        if not self._remote:
            return local
        merged = dict(local)
        for snap in self._remote.values():
            for replica, n in snap.replicas.get(key, {}).items():
                merged[replica] = merged.get(replica, 0) + n
        return merged

    def local_snapshot(self) -> PendingSnapshot:
        return PendingSnapshot(
            endpoints=dict(self._endpoints),
            replicas={k: dict(v) for k, v in self._replicas.items()},
            arrivals=dict(self._arrivals),
        )

    def snapshot(self) -> PendingSnapshot:
        """The counts over every process (this one and the workers that reported)."""
        snap = self.local_snapshot()
        if not self._remote and not self._gone_arrivals:
            return snap
        for key, n in self._gone_arrivals.items():
            snap.arrivals[key] = snap.arrivals.get(key, 0) + n
        for remote in self._remote.values():
            for key, n in remote.endpoints.items():
                snap.endpoints[key] = snap.endpoints.get(key, 0) + n
            for key, n in remote.arrivals.items():
                snap.arrivals[key] = snap.arrivals.get(key, 0) + n
            for key, loads in remote.replicas.items():
                mine = snap.replicas.setdefault(key, {})
                for replica, n in loads.items():
                    mine[replica] = mine.get(replica, 0) + n
        return snap

    def set_remote(self, worker: str, snap: PendingSnapshot) -> None:
        """A worker's latest counts (it reports them whole each time)."""
        self._remote[worker] = snap

    def drop_remote(self, worker: str) -> None:
        """A worker has exited: its requests are gone, its arrivals stay counted (they happened)."""
        snap = self._remote.pop(worker, None)
        if snap is not None:
            for key, n in snap.arrivals.items():
                self._gone_arrivals[key] = self._gone_arrivals.get(key, 0) + n

    def _enter(self, key: str) -> None:
        self.changes += 1
        self._endpoints[key] = self._endpoints.get(key, 0) + 1
        self._arrivals[key] = self._arrivals.get(key, 0) + 1

    def _exit(self, key: str) -> None:
        self.changes += 1
        left = self._endpoints[key] - 1
        if left:
            self._endpoints[key] = left
        else:
            del self._endpoints[key]

    def _bind(self, key: str, replica_id: str) -> None:
        self.changes += 1
        loads = self._replicas.setdefault(key, {})
        n = loads.get(replica_id, 0)
        loads[replica_id] = n + 1
        if not n and self.on_first_bind is not None:
            self.on_first_bind()

    def _unbind(self, key: str, replica_id: str) -> None:
        self.changes += 1
        loads = self._replicas[key]
        left = loads[replica_id] - 1
        if left:
            loads[replica_id] = left
        else:
            del loads[replica_id]
            if not loads:
                del self._replicas[key]


class Ticket:
    """One request's share of the counts. `with counter.track(key) as ticket:`."""

    __slots__ = ("_counter", "key", "replica_id", "_open")
    demand = True

    def __init__(self, counter: PendingCounter, key: str) -> None:
        self._counter = counter
        self.key = key
        self.replica_id: str | None = None
        self._open = False

    def __enter__(self) -> Ticket:
        self._counter._enter(self.key)
        self._open = True
        return self

    def bind(self, replica_id: str) -> None:
        """Count this request against `replica_id` (moving it off a replica it was on before)."""
        if self.replica_id is not None:
            self._counter._unbind(self.key, self.replica_id)
        self._counter._bind(self.key, replica_id)
        self.replica_id = replica_id

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self.replica_id is not None:
            self._counter._unbind(self.key, self.replica_id)
        self._counter._exit(self.key)

    def __exit__(self, *exc: object) -> None:
        self.close()


class Uncounted(Ticket):
    """A request that is not demand: it knows its replica (for metrics) but is in no count."""

    __slots__ = ()
    demand = False

    def __enter__(self) -> Uncounted:
        return self

    def bind(self, replica_id: str) -> None:
        self.replica_id = replica_id

    def close(self) -> None:
        pass
