"""An in-memory `Runtime` for fast unit tests: containers are records, replicas are addresses
handed out by the test. It can be told to be slow, to fail a start, or to kill a replica."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
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


@dataclass
class _Container:
    info: ReplicaInfo
    spec: ContainerSpec
    logs: list[str] = field(default_factory=list)
    cpu_percent: float = 0.0


class FakeRuntime:
    def __init__(self, address: Callable[[str], str] | None = None, images: set[str] | None = None) -> None:
        ports = itertools.count(40000)
        self._address = address or (lambda replica_id: f"127.0.0.1:{next(ports)}")
        self.images: set[str] | None = images  # None: every image is present
        self.containers: dict[str, _Container] = {}
        self.calls: list[tuple[str, str]] = []
        self.start_delay_s = 0.0
        self.fail_next_start: str | None = None  # message of a RuntimeError_ raised by the next start
        self._events: asyncio.Queue[ReplicaEvent] = asyncio.Queue()
        self._ids = itertools.count(1)

    async def ensure_image(self, image: str, auth: RegistryAuth | None = None, progress: ProgressCallback | None = None) -> None:
        self.calls.append(("ensure_image", image))
        if self.images is not None and image not in self.images:
            raise ImagePullFailed("pull image", image, "no such image")

    async def start(self, endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec) -> ReplicaInfo:
        self.calls.append(("start", replica_id))
        if self.start_delay_s:
            await asyncio.sleep(self.start_delay_s)
        if self.fail_next_start is not None:
            message, self.fail_next_start = self.fail_next_start, None
            raise RuntimeError_("start container", container_name(endpoint, replica_id), message)
        info = ReplicaInfo(
            replica_id, endpoint, revision, f"fake{next(self._ids)}", container_name(endpoint, replica_id),
            ReplicaStatus.RUNNING, self._address(replica_id), spec.health_route,
        )
        self.containers[replica_id] = _Container(info, spec, logs=[f"{spec.image} started"])
        return info

    def _get(self, replica_id: str, operation: str) -> _Container:
        container = self.containers.get(replica_id)
        if container is None:
            raise ReplicaNotFound(operation, f"replica {replica_id}", "no such container")
        return container

    def exit(self, replica_id: str, exit_code: int, *log_lines: str) -> None:
        """The container dies (as if the engine crashed), emitting a DIED event."""
        container = self._get(replica_id, "exit")
        container.logs.extend(log_lines)
        container.info = replace(container.info, status=ReplicaStatus.EXITED, address=None, exit_code=exit_code)
        self._events.put_nowait(ReplicaEvent(EventKind.DIED, replica_id, container.info.endpoint, exit_code))

    async def stop(self, replica_id: str, grace_s: float) -> None:
        self.calls.append(("stop", replica_id))
        self._get(replica_id, "stop container")
        del self.containers[replica_id]

    async def list(self, endpoint: EndpointKey | None = None) -> list[ReplicaInfo]:
        return [c.info for c in self.containers.values() if endpoint is None or c.info.endpoint == endpoint]

    async def inspect(self, replica_id: str) -> ReplicaInfo:
        return self._get(replica_id, "inspect").info

    async def logs(self, replica_id: str, tail: int = 50) -> list[str]:
        return self._get(replica_id, "logs").logs[-tail:]

    async def follow_logs(self, replica_id: str, tail: int = 0) -> AsyncIterator[str]:
        for line in self._get(replica_id, "follow logs").logs[-tail:] if tail else []:
            yield line

    async def usage(self, replica_id: str) -> Usage:
        return Usage(self._get(replica_id, "stats").cpu_percent, 0, None)

    async def events(self) -> AsyncIterator[ReplicaEvent]:
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        pass
