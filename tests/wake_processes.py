"""The proxy's processes around an in-memory control plane, for wake tests: the main process's
readiness gate over the controller's route table (wakes to the controller, as in `endpointd
serve`), and worker processes, each with its own gate over its own copy of the routes. What the
hub carries between them — route changes out, wakes in — waits in per-worker queues until the
test delivers it, in order (through the real codec), so that any interleaving can be tried."""

from __future__ import annotations

from collections.abc import Callable

from autoscaler.control.plane import ServeControlPlane
from engines.runtime import EndpointKey
from proxy.core.control import RouteEntry, RouteTable
from proxy.core.hold import ReadinessGate
from proxy.workers import codec
from proxy.workers.messages import RouteChanged, RouteRemoved

NEVER_RETRY_S = 1e9  # no time-based retry of a wake: only the re-arming may wake again


async def no_token(token: str):
    return None


def gate_on(control, clock: Callable[[], float], wall: Callable[[], float]) -> ReadinessGate:
    return ReadinessGate(control, max_held_per_endpoint=1000, retry_after_s=5, wake_retry_s=NEVER_RETRY_S,
                         release_per_replica=32, clock=clock, wall=wall)


class WorkerRoutes(RouteTable):
    """A worker's copy of the routes; its wakes are queued for the hub (remote.py sends them)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def wake(self, namespace: str, name: str) -> None:
        self.sent.append((namespace, name))


class Worker:
    def __init__(self, clock, wall) -> None:
        self.routes = WorkerRoutes()
        self.gate = gate_on(self.routes, clock, wall)
        self.inbox: list[bytes] = []  # the hub's route messages, encoded, not yet read


class Processes:
    """`main` is the main process's route table (give it to the World); `wake` is where the
    main process's wakes go (the controller's wake, or a test's wrapper of it)."""

    def __init__(self, workers: int, clock, wall) -> None:
        self.main = ServeControlPlane(no_token)
        self.gate = gate_on(self.main, clock, wall)
        self.workers = [Worker(clock, wall) for _ in range(workers)]
        self.main.subscribe(self._on_change)

    def bind(self, wake: Callable[[EndpointKey], None]) -> None:
        self.main.bind_waker(wake)

    def _on_change(self, entry: RouteEntry) -> None:
        """hub.py's _on_change: every change to every worker."""
        if self.main.lookup(entry.namespace, entry.name) is None:
            message = codec.encode(RouteRemoved(entry.namespace, entry.name))
        else:
            message = codec.encode(RouteChanged(entry))
        for worker in self.workers:
            worker.inbox.append(message)

    def process(self, index: int) -> tuple[RouteTable, ReadinessGate]:
        """0: the main process; 1…: the workers."""
        if index == 0:
            return self.main, self.gate
        worker = self.workers[index - 1]
        return worker.routes, worker.gate

    def deliver_routes(self, index: int, n: int | None = None) -> None:
        """The worker reads the next `n` route messages (all when None), as worker.py does."""
        worker = self.workers[index - 1]
        count = len(worker.inbox) if n is None else min(n, len(worker.inbox))
        for data in worker.inbox[:count]:
            match codec.to_worker(data):
                case RouteChanged(entry):
                    worker.routes.put(entry)
                case RouteRemoved(namespace, name):
                    worker.routes.remove(namespace, name)
                case other:
                    raise AssertionError(f"the hub sent {other} as a route change")
        del worker.inbox[:count]

    def deliver_wakes(self, index: int, n: int | None = None) -> None:
        """The hub hands the worker's next `n` wakes to the main process's gate, as hub.py does."""
        worker = self.workers[index - 1]
        count = len(worker.routes.sent) if n is None else min(n, len(worker.routes.sent))
        for namespace, name in worker.routes.sent[:count]:
            entry = self.main.lookup(namespace, name)
            if entry is not None:
                self.gate.wake(entry)
        del worker.routes.sent[:count]

    def heard(self, index: int) -> bool:
        """The process has every route change, and the main process every wake it sent."""
        if index == 0:
            return True
        worker = self.workers[index - 1]
        return not worker.inbox and not worker.routes.sent

    def quiet(self) -> bool:
        """Nothing on its way between the processes."""
        return not any(w.inbox or w.routes.sent for w in self.workers)
