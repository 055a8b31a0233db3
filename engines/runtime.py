"""The container runtime seen by the rest of endpointd: a narrow protocol and its value types.

Only `engines/docker.py` talks to Docker (through aiodocker); everything else holds a `Runtime`,
which the in-memory `engines/fake.py` also implements for unit tests.

Errors, one root (an EndpointdError, engines/errors.py):
    RuntimeFailure         any failure of the runtime, naming the operation and the container
      ImagePullFailed      an image is neither local nor pullable
      ReplicaNotFound      no container of ours under that replica id
"""

from __future__ import annotations

import builtins
import enum
import hashlib
import re
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Protocol

from engines.errors import EndpointdError

# Labels put on every container endpointd starts; a restarted endpointd finds its replicas by them.
LABEL_MANAGED = "endpointd.managed"
LABEL_INSTANCE = "endpointd.instance"  # which endpointd (data directory) owns the container
LABEL_NAMESPACE = "endpointd.namespace"
LABEL_NAME = "endpointd.name"
LABEL_REPLICA = "endpointd.replica"
LABEL_REVISION = "endpointd.revision"
LABEL_PORT = "endpointd.port"
LABEL_HEALTH_ROUTE = "endpointd.health-route"
# The replica's engine API key, kept on its container so that a restarted endpointd can still
# authenticate to the replicas it adopts. Only who controls the Docker engine can read it (and
# they can read the engine's environment anyway).
LABEL_API_KEY = "endpointd.api-key"

# Capabilities an engine keeps; every other one is dropped. NET_BIND_SERVICE lets an engine run
# as root bind a port below 1024 (TGI, TEI, the echo engine and most custom images listen on 80).
# Docker 20.10 already lets any user bind low ports inside a container
# (net.ipv4.ip_unprivileged_port_start=0), so this is for engines where that sysctl differs.
# Nothing else is needed by the engines presets run: they run as root on files their image owns
# and read the model, which must be world-readable as the Hub cache writes it (no DAC_OVERRIDE,
# DAC_READ_SEARCH, CHOWN, FOWNER), never switch users (no SETUID, SETGID), and reach GPUs through
# the device nodes the NVIDIA runtime adds (no capability involved). A custom image that chowns
# or drops to another user at start fails, with the reason in its log.
DEFAULT_CAPABILITIES = ("NET_BIND_SERVICE",)

# Docker network names: the characters Docker accepts, and a bound that keeps them readable in
# `docker network ls` (the bridge interface is named from the network id, so no kernel limit applies).
_NETWORK_CHARS = re.compile(r"[^a-zA-Z0-9_.-]")
NETWORK_NAME_MAX = 63
# Hex digits of SHA-256 over (instance, namespace, name) in a network name: two endpoints whose
# readable parts collide ("a-b"/"c" and "a"/"b-c") or were cut short still get two networks.
NETWORK_DIGEST_CHARS = 12


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
    # The key the engine was configured with (by the preset: an env var in `secret_env`, or a flag
    # in `args` for engines that take none from the environment). The runtime keeps it on the
    # container (LABEL_API_KEY) and gives it back as ReplicaInfo.api_key; None: the engine has none.
    api_key: str | None = field(default=None, repr=False)
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES  # kept; every other capability is dropped

    def __repr__(self) -> str:
        """The fields that are not secret, with the API key masked where a flag carries it."""
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if self.api_key and isinstance(value, tuple):
                value = tuple("***" if item == self.api_key else item for item in value)
            shown.append(f"{f.name}={value!r}")
        return f"ContainerSpec({', '.join(shown)})"


class ContainerStatus(enum.StrEnum):
    """The status of a replica's container as the runtime reports it (Docker's states folded to
    three). RUNNING says the process runs, not that it serves: the owner's Phase and the user's
    ReplicaState stay starting/initializing until the engine passes its readiness check."""

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
    status: ContainerStatus
    address: str | None  # "127.0.0.1:PORT" where the engine's port is published; None if not running
    health_route: str
    exit_code: int | None = None
    # The GPU device ids the container was given, read back from the container itself, so that a
    # restarted endpointd rebuilds its GPU assignments from the replicas it adopts.
    gpus: tuple[str, ...] = ()
    # The engine API key the replica was started with (read back from its container, so adopted
    # replicas have it too); the proxy and the health probes send it as a bearer token. None: the
    # engine was given none (the inference toolkit, custom images, replicas started before keys).
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_percent: float  # of one CPU, as `docker stats` shows it (200.0 = two CPUs busy)
    memory_bytes: int
    memory_limit_bytes: int | None


class EventKind(enum.StrEnum):
    """What the runtime reports of a container unasked (its event stream): that it died."""

    DIED = "died"


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    kind: EventKind
    replica_id: str
    endpoint: EndpointKey
    exit_code: int | None


ProgressCallback = Callable[[str], None]


class RuntimeFailure(EndpointdError):
    """A runtime operation failed. The message names the operation and the container or image."""

    def __init__(self, operation: str, target: str, detail: str) -> None:
        super().__init__(f"{operation} {target}: {detail}")
        self.operation = operation
        self.target = target
        self.detail = detail


class ImagePullFailed(RuntimeFailure):
    pass


class ReplicaNotFound(RuntimeFailure):
    pass


def container_name(endpoint: EndpointKey, replica_id: str) -> str:
    return f"endpointd-{endpoint.namespace}-{endpoint.name}-{replica_id}"


def network_name(instance: str | None, endpoint: EndpointKey) -> str:
    """The Docker network of one endpoint's replicas: readable, at most NETWORK_NAME_MAX
    characters, and distinct for every (instance, endpoint) pair (a digest of the exact parts)."""
    exact = "\0".join((instance or "", endpoint.namespace, endpoint.name))
    digest = hashlib.sha256(exact.encode()).hexdigest()[:NETWORK_DIGEST_CHARS]
    readable = _NETWORK_CHARS.sub("-", "-".join(p for p in (instance, endpoint.namespace, endpoint.name) if p))
    room = NETWORK_NAME_MAX - len("endpointd--") - NETWORK_DIGEST_CHARS
    return f"endpointd-{readable[:room]}-{digest}"


def network_labels(instance: str | None, endpoint: EndpointKey) -> dict[str, str]:
    """The labels of an endpoint's network: endpointd's, as on its containers (no replica)."""
    labels = {LABEL_MANAGED: "true", LABEL_NAMESPACE: endpoint.namespace, LABEL_NAME: endpoint.name}
    if instance:
        labels[LABEL_INSTANCE] = instance
    return labels


class Runtime(Protocol):
    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, progress: ProgressCallback | None = None
    ) -> None:
        """Use the image if it is local, else pull it; ImagePullFailed names the image."""

    async def start(
        self, endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec,
        on_created: Callable[[], None] | None = None,
    ) -> ReplicaInfo:
        """Create and start a container on the endpoint's own network (never Docker's default
        bridge), made by the endpoint's first start; its port is published on 127.0.0.1 at a
        random host port. Concurrent starts of one endpoint share one network. `on_created` is
        called once the container exists, before it is started (a wake's phases are timed by it).

        Until it is started the container is listed as CREATED, without an address. A failed start
        leaves no container behind. Cancellation-safe: when the task awaiting it is cancelled, at
        any point, the container it made (even one the engine creates after the cancel, because the
        request had already reached it) is removed before CancelledError propagates."""

    async def remove_network(self, endpoint: EndpointKey) -> None:
        """Remove the endpoint's network, once its last replica is gone (after a delete). No
        error when there is none; a network that a running container still uses (a re-created
        endpoint of the same name has started one) is kept: it is that endpoint's now. A parked
        container does not hold it (Docker keeps a network only for running ones): the network is
        removed, and that container can no longer be unparked."""

    async def networks(self) -> list[EndpointKey]:
        """The endpoints that have a network of this runtime's instance (all instances' without
        one), for a sweep of networks whose endpoint is gone."""

    async def stop(self, replica_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after grace_s; then remove the container. ReplicaNotFound if none.

        A container that already exited is only removed; a hung one (frozen, not answering) is
        stopped and removed all the same."""

    async def park(self, replica_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after grace_s, as `stop`; but the container is kept, to be started
        again by `unpark`: listed as EXITED, without an address. ReplicaNotFound if none.

        A container that already exited is left as it is, and so is one never started (it stays
        CREATED; `unpark` starts it too); a hung one is killed after grace_s. The process's end is
        reported by `events()` as a death, as any exit is. Its network is not held by a stopped
        container: `remove_network` removes it, and the unpark then fails. A cancelled park may
        still stop the container (the engine finishes a stop it was asked for)."""

    async def unpark(self, replica_id: str, on_started: Callable[[], None] | None = None) -> ReplicaInfo:
        """Start a parked (or never started) container again and return it as it is now, RUNNING:
        its port is published anew, at a new random host port, so its address is a new one (by
        name in container mode: the same). `on_started` is called once the engine has started it,
        before it is inspected anew. One that runs already is returned as it is.

        ReplicaNotFound if none; RuntimeFailure, with the engine's reason, if it cannot start (its
        network was removed, its GPUs are gone): the container is left stopped. Cancellation-safe:
        when the task awaiting it is cancelled, at any point, the container is stopped again at once
        (SIGKILL, no grace: it served nothing yet) and kept, parked as before, before
        CancelledError propagates; that kill, if it ran, is reported as a death."""

    async def list(self, endpoint: EndpointKey | None = None) -> list[ReplicaInfo]:
        """The containers endpointd owns (found by label), all of them or one endpoint's; with an
        instance, only that instance's."""

    async def inspect(self, replica_id: str) -> ReplicaInfo:
        ...

    async def logs(self, replica_id: str, tail: int = 50) -> builtins.list[str]:
        ...

    def follow_logs(self, replica_id: str, tail: int = 0) -> AsyncGenerator[str, None]:
        ...

    async def usage(self, replica_id: str) -> Usage:
        ...

    def events(self) -> AsyncGenerator[ReplicaEvent, None]:
        """Deaths of containers endpointd owns (a stop or a park is one too), as they happen from this
        call on."""

    async def close(self) -> None:
        ...
