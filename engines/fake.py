"""An in-memory `Runtime` for fast unit tests of the control plane, modelling what the Docker one
does where the control plane can tell: a start puts the container on its endpoint's network (made
by the endpoint's first start; `remove_network` keeps one a live container is on), and is first a
CREATED container without an address, then a RUNNING one; a cancelled start removes its container;
a stop sends "SIGTERM", which a container may ignore until the grace period ends (exit code 137);
a park is a stop that keeps the container (EXITED), and an unpark runs it again at a new address;
several runtimes of different instances share one engine (`FakeEngine`) and never see each other's
containers. Addresses come from the test. It can be told to be slow, to fail a start, to kill or
hang a replica, raises the errors the Docker runtime raises, and records the calls it gets."""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace

from .runtime import (
    LABEL_INSTANCE,
    LABEL_NAME,
    LABEL_NAMESPACE,
    ContainerSpec,
    ContainerStatus,
    EndpointKey,
    EventKind,
    ImagePullFailed,
    ProgressCallback,
    RegistryAuth,
    ReplicaEvent,
    ReplicaInfo,
    ReplicaNotFound,
    RuntimeFailure,
    Usage,
    container_name,
    network_labels,
    network_name,
)

# Where the default addresses start: high, unprivileged, and clearly not a real replica's.
FIRST_FAKE_PORT = 40000
# The exit code of a container killed by SIGKILL (128 + 9), as Docker reports it.
SIGKILL_EXIT_CODE = 137


@dataclass(frozen=True)
class FakeNetwork:
    name: str
    id: str
    labels: dict[str, str]


@dataclass
class _Container:
    info: ReplicaInfo
    spec: ContainerSpec
    instance: str | None  # the `endpointd.instance` label of the runtime that made it
    lines: list[str]
    network: str = ""  # the name of the endpoint network it is on
    usage: Usage = Usage(0.0, 0, None)
    ignores_sigterm: bool = False
    hung: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set and replaced on each change


class FakeEngine:
    """The containers of one in-memory engine, shared by the `FakeRuntime`s given it, as several
    endpointd instances share one Docker engine. Names are unique engine-wide, as Docker's are."""

    def __init__(self) -> None:
        self.containers: dict[str, _Container] = {}  # by container id, of every instance
        self.networks: dict[str, FakeNetwork] = {}  # by name, of every instance
        self._ids = itertools.count(1)
        self._ports = itertools.count(FIRST_FAKE_PORT)
        self._subscribers: list[tuple[str | None, asyncio.Queue[ReplicaEvent]]] = []

    def next_container_id(self) -> str:
        return f"fake{next(self._ids)}"

    def next_address(self) -> str:
        return f"127.0.0.1:{next(self._ports)}"

    def subscribe(self, instance: str | None) -> asyncio.Queue[ReplicaEvent]:
        queue: asyncio.Queue[ReplicaEvent] = asyncio.Queue()
        self._subscribers.append((instance, queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ReplicaEvent]) -> None:
        self._subscribers = [(i, q) for i, q in self._subscribers if q is not queue]

    def exited(self, container: _Container, exit_code: int) -> None:
        """The container's process ended: a DIED event to the runtimes that can see it."""
        container.info = replace(container.info, status=ContainerStatus.EXITED, address=None, exit_code=exit_code)
        _changed(container)
        event = ReplicaEvent(EventKind.DIED, container.info.replica_id, container.info.endpoint, exit_code)
        for instance, queue in self._subscribers:
            if instance is None or instance == container.instance:
                queue.put_nowait(event)

    def ensure_network(self, instance: str | None, endpoint: EndpointKey) -> FakeNetwork:
        """The endpoint's network, made if there is none (at once: the fake has no race to lose)."""
        name = network_name(instance, endpoint)
        if name not in self.networks:
            self.networks[name] = FakeNetwork(name, f"net{next(self._ids)}", network_labels(instance, endpoint))
        return self.networks[name]

    def remove_network(self, name: str) -> bool:
        """Remove the network unless a live container is on it, as Docker refuses one with active
        endpoints (an exited container does not hold it); whether it is gone."""
        if any(c.network == name and c.info.status is not ContainerStatus.EXITED for c in self.containers.values()):
            return False
        self.networks.pop(name, None)
        return True

    def remove(self, container: _Container) -> None:
        """Idempotent, as two concurrent removals in Docker end with the container gone."""
        self.containers.pop(container.info.container_id, None)
        _changed(container)


class FakeRuntime:
    def __init__(
        self,
        address: Callable[[str], str] | None = None,
        images: set[str] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        engine: FakeEngine | None = None,
        instance: str | None = None,
    ) -> None:
        """`address(replica_id)` gives a replica's "host:port", asked at each start and unpark
        (default: 127.0.0.1 and a counter of the engine, so an unpark's address is a new one); `images`: the local images (None: every image is local); `sleep` is what the
        start delay and a stop's grace period await; `engine`: shared with other runtimes (None: a
        private one); `instance`, like DockerRuntime's, scopes this runtime to the containers it
        made (None: it sees every container of the engine, and its own belong to no instance)."""
        self.engine = engine or FakeEngine()
        self.instance = instance
        self._address = address or (lambda replica_id: self.engine.next_address())
        self._sleep = sleep
        self.images = images
        self.start_delay_s = 0.0  # each start awaits sleep(start_delay_s) between create and running
        self.calls: list[tuple[str, str]] = []  # (method, replica id or image)
        self._start_failure: str | None = None
        self._start_exit: tuple[int, tuple[str, ...]] | None = None

    @property
    def containers(self) -> dict[str, _Container]:
        """This runtime's containers by replica id (a snapshot: change them through the methods)."""
        return {c.info.replica_id: c for c in self._own()}

    # --- what a test tells the fake --------------------------------------------------------

    def fail_next_start(self, detail: str) -> None:
        """The next start or unpark raises RuntimeFailure with this detail after its start delay
        (as when Docker creates the container but cannot start it); a start's container is removed,
        an unpark's is left stopped."""
        self._start_failure = detail

    def exit_next_start(self, exit_code: int, *lines: str) -> None:
        """The next started (or unparked) container exits at once with this code, having written
        these lines."""
        self._start_exit = (exit_code, lines)

    def write_log(self, replica_id: str, *lines: str) -> None:
        container = self._get("write log", replica_id)
        container.lines.extend(lines)
        _changed(container)

    def set_usage(self, replica_id: str, usage: Usage) -> None:
        self._get("set usage", replica_id).usage = usage

    def kill(self, replica_id: str, exit_code: int = SIGKILL_EXIT_CODE, *lines: str) -> None:
        """The container dies (the engine crashed, or was killed), emitting a DIED event."""
        container = self._get("kill", replica_id)
        container.lines.extend(lines)
        self.engine.exited(container, exit_code)

    def ignore_sigterm(self, replica_id: str) -> None:
        """The container's engine ignores SIGTERM: a stop ends it only after its grace period."""
        self._get("ignore SIGTERM", replica_id).ignores_sigterm = True

    def hang(self, replica_id: str) -> None:
        """The container keeps running but stops answering (as under `docker pause`)."""
        self._get("hang", replica_id).hung = True

    def is_hung(self, replica_id: str) -> bool:
        """Whether the replica stopped answering: a test launcher's health probe fails when it did."""
        return self._get("probe", replica_id).hung

    # --- the Runtime protocol --------------------------------------------------------------

    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, progress: ProgressCallback | None = None
    ) -> None:
        self.calls.append(("ensure_image", image))
        if self.images is not None and image not in self.images:
            raise ImagePullFailed("pull image", image, "no registry has it")

    async def start(
        self, endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec,
        on_created: Callable[[], None] | None = None,
    ) -> ReplicaInfo:
        self.calls.append(("start", replica_id))
        name = container_name(endpoint, replica_id)
        network = self.engine.ensure_network(self.instance, endpoint)  # first, as the Docker runtime does
        # What Docker refuses at create time, before any container exists.
        if self.images is not None and spec.image not in self.images:
            raise RuntimeFailure("start container", name, f"No such image: {spec.image}")
        if any(c.info.replica_id == replica_id for c in self._own()):
            raise RuntimeFailure("start container", name, "a container of this replica id already exists")
        if any(c.info.container_name == name for c in self.engine.containers.values()):
            raise RuntimeFailure("start container", name, f"the container name {name} is already in use")
        info = ReplicaInfo(
            replica_id, endpoint, revision, self.engine.next_container_id(), name,
            ContainerStatus.CREATED, None, spec.health_route, gpus=spec.gpu_device_ids, api_key=spec.api_key,
        )
        container = _Container(info, spec, self.instance, [], network=network.name)
        self.engine.containers[info.container_id] = container
        try:
            if on_created is not None:
                on_created()
            if self.start_delay_s:
                await self._sleep(self.start_delay_s)
            if self.engine.containers.get(info.container_id) is not container:
                raise RuntimeFailure("start container", name, f"No such container: {info.container_id}")
            if self._start_failure is not None:
                detail, self._start_failure = self._start_failure, None
                raise RuntimeFailure("start container", name, detail)
        except BaseException:
            # A failed or cancelled start leaves no container behind. It never ran: no DIED event.
            self.engine.remove(container)
            raise
        container.info = replace(info, status=ContainerStatus.RUNNING, address=self._address(replica_id))
        container.lines.append(f"{spec.image} started")
        if self._start_exit is not None:
            (exit_code, lines), self._start_exit = self._start_exit, None
            container.lines.extend(lines)
            self.engine.exited(container, exit_code)
        return container.info

    async def stop(self, replica_id: str, grace_s: float) -> None:
        """SIGTERM: a running container exits with 0 at once, or, if it ignores SIGTERM, with 137
        after grace_s. Then it is removed; an exited (or never started) one is only removed."""
        self.calls.append(("stop", replica_id))
        container = self._get("stop container", replica_id)
        await self._terminate(container, grace_s)
        self.engine.remove(container)

    async def park(self, replica_id: str, grace_s: float) -> None:
        """As stop, but the container is kept (EXITED, no address); one that is not running (exited,
        or never started) is left as it is."""
        self.calls.append(("park", replica_id))
        await self._terminate(self._get("park container", replica_id), grace_s)

    async def unpark(self, replica_id: str, on_started: Callable[[], None] | None = None) -> ReplicaInfo:
        """Run a parked (or never started) container again after the start delay, at a new address
        (the next of `address(replica_id)`); one that runs is returned as it is. Its network gone
        (removed while it was parked), or told to fail, it raises RuntimeFailure and stays
        stopped; cancelled, it stays as it was (parked)."""
        self.calls.append(("unpark", replica_id))
        container = self._get("unpark container", replica_id)
        if container.info.status is ContainerStatus.RUNNING:
            return container.info
        target = f"replica {replica_id}"
        if self.start_delay_s:
            await self._sleep(self.start_delay_s)
        if self.engine.containers.get(container.info.container_id) is not container:
            raise ReplicaNotFound("unpark container", target, "no such container")
        if container.network not in self.engine.networks:  # as Docker checks it: at the start
            raise RuntimeFailure("unpark container", target, f"network {container.network} not found")
        if self._start_failure is not None:
            detail, self._start_failure = self._start_failure, None
            raise RuntimeFailure("unpark container", target, detail)
        container.hung = False  # a new process
        container.info = replace(
            container.info, status=ContainerStatus.RUNNING, address=self._address(replica_id), exit_code=None)
        container.lines.append(f"{container.spec.image} started")
        _changed(container)
        if on_started is not None:
            on_started()
        if self._start_exit is not None:
            (exit_code, lines), self._start_exit = self._start_exit, None
            container.lines.extend(lines)
            self.engine.exited(container, exit_code)
        return container.info

    async def list(self, endpoint: EndpointKey | None = None) -> list[ReplicaInfo]:
        return [c.info for c in self._own() if endpoint is None or c.info.endpoint == endpoint]

    async def remove_network(self, endpoint: EndpointKey) -> None:
        self.calls.append(("remove_network", str(endpoint)))
        self.engine.remove_network(network_name(self.instance, endpoint))

    async def networks(self) -> builtins.list[EndpointKey]:
        keys = {
            EndpointKey(n.labels[LABEL_NAMESPACE], n.labels[LABEL_NAME])
            for n in self.engine.networks.values()
            if self.instance is None or n.labels.get(LABEL_INSTANCE) == self.instance
        }
        return sorted(keys, key=lambda key: (key.namespace, key.name))

    async def inspect(self, replica_id: str) -> ReplicaInfo:
        return self._get("inspect", replica_id).info

    async def logs(self, replica_id: str, tail: int = 50) -> builtins.list[str]:
        lines = self._get("logs", replica_id).lines
        return lines[-tail:] if tail > 0 else []

    async def follow_logs(self, replica_id: str, tail: int = 0) -> AsyncGenerator[str, None]:
        container = self._get("follow logs", replica_id)
        sent = max(0, len(container.lines) - tail)
        while True:
            changed = container.changed
            while sent < len(container.lines):
                sent += 1
                yield container.lines[sent - 1]
            gone = container.info.container_id not in self.engine.containers
            if gone or container.info.status is ContainerStatus.EXITED:
                return
            await changed.wait()

    async def usage(self, replica_id: str) -> Usage:
        return self._get("stats", replica_id).usage

    def events(self) -> AsyncGenerator[ReplicaEvent, None]:
        """Deaths of this runtime's containers from this call on, to every caller, as the Docker
        runtime's event stream."""
        return self._deaths(self.engine.subscribe(self.instance))

    async def _deaths(self, queue: asyncio.Queue[ReplicaEvent]) -> AsyncGenerator[ReplicaEvent, None]:
        try:
            while True:
                yield await queue.get()
        finally:
            self.engine.unsubscribe(queue)

    async def close(self) -> None:
        self.calls.append(("close", ""))

    # --- internals ---------------------------------------------------------------------------

    async def _terminate(self, container: _Container, grace_s: float) -> None:
        """"SIGTERM": a running container exits with 0 at once, or, if it ignores SIGTERM, with 137
        after grace_s; one that is not running is left as it is."""
        if container.info.status is not ContainerStatus.RUNNING:
            return
        if container.ignores_sigterm:
            await self._sleep(grace_s)
            if container.info.status is ContainerStatus.RUNNING:  # not ended meanwhile
                self.engine.exited(container, SIGKILL_EXIT_CODE)
        else:
            self.engine.exited(container, 0)

    def _own(self) -> builtins.list[_Container]:
        return [c for c in self.engine.containers.values() if self.instance is None or c.instance == self.instance]

    def _get(self, operation: str, replica_id: str) -> _Container:
        """The first container of this replica id, as DockerRuntime finds one by its label."""
        container = next((c for c in self._own() if c.info.replica_id == replica_id), None)
        if container is None:
            raise ReplicaNotFound(operation, f"replica {replica_id}", "no container of endpointd has this replica id")
        return container


def _changed(container: _Container) -> None:
    """Wake the followers of this container's log (they wait on the current event)."""
    container.changed.set()
    container.changed = asyncio.Event()
