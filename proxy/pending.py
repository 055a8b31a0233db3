"""The one place pending requests are counted: the scaling signal and the balancing signal.

A request is pending from the moment it passes auth until its response body is complete:
held, queued, in flight and streaming all count. Counting goes through `Ticket`, a context
manager whose exit runs in `finally`, so errors, timeouts and cancellations (client
disconnects) can never leak a count. Everything here runs on the event loop thread, so the
plain dict updates below are atomic with respect to each other.

Only demand is counted: the control plane's own health probe gets an `Uncounted` ticket, so it
is never pending, never an arrival and never on a replica's load — a probe of an endpoint at
zero must not look like a client wanting it back.
"""

from __future__ import annotations

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

    def track(self, key: str, demand: bool = True) -> Ticket:
        """One request's ticket; `demand=False` (the control plane's probe) counts nothing."""
        return Ticket(self, key) if demand else Uncounted(self, key)

    def replica_loads(self, key: str) -> dict[str, int]:
        """Live (not copied) in-flight counts per replica of one endpoint, for the balancer."""
        return self._replicas.get(key) or {}

    def snapshot(self) -> PendingSnapshot:
        return PendingSnapshot(
            endpoints=dict(self._endpoints),
            replicas={k: dict(v) for k, v in self._replicas.items()},
            arrivals=dict(self._arrivals),
        )

    def _enter(self, key: str) -> None:
        self._endpoints[key] = self._endpoints.get(key, 0) + 1
        self._arrivals[key] = self._arrivals.get(key, 0) + 1

    def _exit(self, key: str) -> None:
        left = self._endpoints[key] - 1
        if left:
            self._endpoints[key] = left
        else:
            del self._endpoints[key]

    def _bind(self, key: str, replica_id: str) -> None:
        loads = self._replicas.setdefault(key, {})
        loads[replica_id] = loads.get(replica_id, 0) + 1

    def _unbind(self, key: str, replica_id: str) -> None:
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
