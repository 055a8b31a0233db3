"""The container runtime seen by the rest of endpointd: a narrow protocol and its value types.

Only `engines/docker.py` talks to Docker (through aiodocker); everything else holds a `Runtime`,
which the in-memory `engines/fake.py` also implements for unit tests.

Errors, one root:
    RuntimeError_          any failure of the runtime, naming the operation and the container
      ImagePullFailed      an image is neither local nor pullable
      ReplicaNotFound      no container of ours under that replica id
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

# Labels put on every container endpointd starts; a restarted endpointd finds its replicas by them.
LABEL_MANAGED = "endpointd.managed"
LABEL_INSTANCE = "endpointd.instance"  # which endpointd (data directory) owns the container
LABEL_NAMESPACE = "endpointd.namespace"
LABEL_NAME = "endpointd.name"
LABEL_REPLICA = "endpointd.replica"
LABEL_REVISION = "endpointd.revision"
LABEL_PORT = "endpointd.port"
LABEL_HEALTH_ROUTE = "endpointd.health-route"


@dataclass(frozen=True, slots=True)
class EndpointKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Mount:
    source: str  # absolute host path
    target: str  # path inside the container
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    username: str
    password: str | None = None

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        return f"RegistryAuth(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one replica of an engine. Built by `engines/presets.py`."""

    image: str
    port: int = 80  # the port the engine listens on inside the container
    health_route: str = "/health"
    entrypoint: tuple[str, ...] | None = None  # None: the image's own
    args: tuple[str, ...] | None = None  # None: the image's own CMD
    env: Mapping[str, str] = field(default_factory=dict)
    # Secret values reach the container's environment but are never logged nor returned by an API.
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    mounts: tuple[Mount, ...] = ()
    shm_size_bytes: int | None = None
    cpus: float | None = None  # CPU limit (NanoCpus); None: unlimited
    memory_bytes: int | None = None  # memory limit; None: unlimited
    gpu_device_ids: tuple[str, ...] = ()  # explicit NVIDIA device ids, never shared by two replicas
    registry_auth: RegistryAuth | None = None


class ReplicaStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What the runtime knows of one container it owns."""

    replica_id: str
    endpoint: EndpointKey
    revision: str
    container_id: str
    container_name: str
    status: ReplicaStatus
    address: str | None  # "127.0.0.1:PORT" where the engine's port is published; None if not running
    health_route: str
    exit_code: int | None = None
    # The GPU device ids the container was given, read back from the container itself, so that a
    # restarted endpointd rebuilds its GPU assignments from the replicas it adopts.
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_percent: float  # of one CPU, as `docker stats` shows it (200.0 = two CPUs busy)
    memory_bytes: int
    memory_limit_bytes: int | None


class EventKind(enum.StrEnum):
    DIED = "died"


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    kind: EventKind
    replica_id: str
    endpoint: EndpointKey
    exit_code: int | None


ProgressCallback = Callable[[str], None]


class RuntimeError_(Exception):
    """A runtime operation failed. The message names the operation and the container or image."""

    def __init__(self, operation: str, target: str, detail: str) -> None:
        super().__init__(f"{operation} {target}: {detail}")
        self.operation = operation
        self.target = target
        self.detail = detail


class ImagePullFailed(RuntimeError_):
    pass


class ReplicaNotFound(RuntimeError_):
    pass


def container_name(endpoint: EndpointKey, replica_id: str) -> str:
    return f"endpointd-{endpoint.namespace}-{endpoint.name}-{replica_id}"


class Runtime(Protocol):
    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, progress: ProgressCallback | None = None
    ) -> None:
        """Use the image if it is local, else pull it; ImagePullFailed names the image."""

    async def start(
        self, endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec
    ) -> ReplicaInfo:
        """Create and start a container; its port is published on 127.0.0.1 at a random host port.

        Until it is started the container is listed as CREATED, without an address. A failed start
        leaves no container behind. Cancellation-safe: when the task awaiting it is cancelled, at
        any point, the container it made (even one the engine creates after the cancel, because the
        request had already reached it) is removed before CancelledError propagates."""

    async def stop(self, replica_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after grace_s; then remove the container. ReplicaNotFound if none.

        A container that already exited is only removed; a hung one (frozen, not answering) is
        stopped and removed all the same."""

    async def list(self, endpoint: EndpointKey | None = None) -> list[ReplicaInfo]:
        """The containers endpointd owns (found by label), all of them or one endpoint's; with an
        instance, only that instance's."""

    async def inspect(self, replica_id: str) -> ReplicaInfo:
        ...

    async def logs(self, replica_id: str, tail: int = 50) -> list[str]:
        ...

    def follow_logs(self, replica_id: str, tail: int = 0) -> AsyncIterator[str]:
        ...

    async def usage(self, replica_id: str) -> Usage:
        ...

    def events(self) -> AsyncIterator[ReplicaEvent]:
        """Deaths of containers endpointd owns (a stop is one too), as they happen from this call on."""

    async def close(self) -> None:
        ...
