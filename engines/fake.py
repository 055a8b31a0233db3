"""An in-memory `Runtime` for fast unit tests of the control plane: containers are records, their
addresses come from the test. It can be told to be slow, to fail a start, or to kill a replica,
raises the errors the Docker runtime raises, and records the calls it gets."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

from .runtime import (
    ContainerSpec,
    EndpointKey,
    EventKind,
    ImagePullFailed,
    ProgressCallback,
    RegistryAuth,
    ReplicaEvent,
    ReplicaInfo,
    ReplicaNotFound,
    ReplicaStatus,
    RuntimeError_,
    Usage,
    container_name,
)

# Where the default addresses start: high, unprivileged, and clearly not a real replica's.
FIRST_FAKE_PORT = 40000


@dataclass
class _Container:
    info: ReplicaInfo
    spec: ContainerSpec
    lines: list[str]
    usage: Usage = Usage(0.0, 0, None)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set and replaced on each change


class FakeRuntime:
    def __init__(
        self,
        address: Callable[[str], str] | None = None,
        images: set[str] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`address(replica_id)` gives a replica's "host:port" (default: 127.0.0.1 and a counter);
        `images`: the local images (None: every image is local)."""
        ports = itertools.count(FIRST_FAKE_PORT)
        self._address = address or (lambda replica_id: f"127.0.0.1:{next(ports)}")
        self._sleep = sleep
        self.images = images
        self.start_delay_s = 0.0  # each start awaits sleep(start_delay_s) first
        self.containers: dict[str, _Container] = {}
        self.calls: list[tuple[str, str]] = []  # (method, replica id or image)
        self._start_failure: str | None = None
        self._start_exit: tuple[int, tuple[str, ...]] | None = None
        self._subscribers: list[asyncio.Queue[ReplicaEvent]] = []
        self._ids = itertools.count(1)

    # --- what a test tells the fake --------------------------------------------------------

    def fail_next_start(self, detail: str) -> None:
        """The next start raises RuntimeError_ with this detail (as when Docker refuses to create)."""
        self._start_failure = detail

    def exit_next_start(self, exit_code: int, *lines: str) -> None:
        """The next started container exits at once with this code, having written these lines."""
        self._start_exit = (exit_code, lines)

    def write_log(self, replica_id: str, *lines: str) -> None:
        container = self._get("write log", replica_id)
        container.lines.extend(lines)
        self._changed(container)

    def set_usage(self, replica_id: str, usage: Usage) -> None:
        self._get("set usage", replica_id).usage = usage

    def kill(self, replica_id: str, exit_code: int = 137, *lines: str) -> None:
        """The container dies (the engine crashed, or was killed), emitting a DIED event."""
        container = self._get("kill", replica_id)
        container.lines.extend(lines)
        self._exited(container, exit_code)

    # --- the Runtime protocol --------------------------------------------------------------

    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, progress: ProgressCallback | None = None
    ) -> None:
        self.calls.append(("ensure_image", image))
        if self.images is not None and image not in self.images:
            raise ImagePullFailed("pull image", image, "no registry has it")

    async def start(self, endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec) -> ReplicaInfo:
        self.calls.append(("start", replica_id))
        name = container_name(endpoint, replica_id)
        if self.start_delay_s:
            await self._sleep(self.start_delay_s)
        if self._start_failure is not None:
            detail, self._start_failure = self._start_failure, None
            raise RuntimeError_("start container", name, detail)
        if self.images is not None and spec.image not in self.images:
            raise RuntimeError_("start container", name, f"No such image: {spec.image}")
        if replica_id in self.containers:
            raise RuntimeError_("start container", name, "a container of this replica id already exists")
        info = ReplicaInfo(
            replica_id, endpoint, revision, f"fake{next(self._ids)}", name,
            ReplicaStatus.RUNNING, self._address(replica_id), spec.health_route,
        )
        container = self.containers[replica_id] = _Container(info, spec, [f"{spec.image} started"])
        if self._start_exit is not None:
            (exit_code, lines), self._start_exit = self._start_exit, None
            container.lines.extend(lines)
            self._exited(container, exit_code)
        return info

    async def stop(self, replica_id: str, grace_s: float) -> None:
        """Removes the container; a running one first exits with 0, as an engine does on SIGTERM."""
        self.calls.append(("stop", replica_id))
        container = self._get("stop container", replica_id)
        if container.info.status is ReplicaStatus.RUNNING:
            self._exited(container, 0)
        del self.containers[replica_id]

    async def list(self, endpoint: EndpointKey | None = None) -> list[ReplicaInfo]:
        return [c.info for c in self.containers.values() if endpoint is None or c.info.endpoint == endpoint]

    async def inspect(self, replica_id: str) -> ReplicaInfo:
        return self._get("inspect", replica_id).info

    async def logs(self, replica_id: str, tail: int = 50) -> list[str]:
        lines = self._get("logs", replica_id).lines
        return lines[-tail:] if tail > 0 else []

    async def follow_logs(self, replica_id: str, tail: int = 0) -> AsyncIterator[str]:
        container = self._get("follow logs", replica_id)
        sent = max(0, len(container.lines) - tail)
        while True:
            changed = container.changed
            while sent < len(container.lines):
                sent += 1
                yield container.lines[sent - 1]
            if container.info.status is not ReplicaStatus.RUNNING:
                return
            await changed.wait()

    async def usage(self, replica_id: str) -> Usage:
        return self._get("stats", replica_id).usage

    def events(self) -> AsyncIterator[ReplicaEvent]:
        """Deaths from this call on, to every caller, as the Docker runtime's event stream."""
        queue: asyncio.Queue[ReplicaEvent] = asyncio.Queue()
        self._subscribers.append(queue)
        return self._deaths(queue)

    async def _deaths(self, queue: asyncio.Queue[ReplicaEvent]) -> AsyncIterator[ReplicaEvent]:
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(queue)

    async def close(self) -> None:
        self.calls.append(("close", ""))

    # --- internals ---------------------------------------------------------------------------

    def _get(self, operation: str, replica_id: str) -> _Container:
        container = self.containers.get(replica_id)
        if container is None:
            raise ReplicaNotFound(operation, f"replica {replica_id}", "no container of endpointd has this replica id")
        return container

    def _exited(self, container: _Container, exit_code: int) -> None:
        container.info = replace(container.info, status=ReplicaStatus.EXITED, address=None, exit_code=exit_code)
        self._changed(container)
        event = ReplicaEvent(EventKind.DIED, container.info.replica_id, container.info.endpoint, exit_code)
        for queue in self._subscribers:
            queue.put_nowait(event)

    @staticmethod
    def _changed(container: _Container) -> None:
        """Wake the followers of this container's log (they wait on the current event)."""
        container.changed.set()
        container.changed = asyncio.Event()
