"""The Docker runtime: the only module that imports aiodocker.

Every aiodocker error (and every failure to reach the engine) is wrapped here into `RuntimeFailure`
(or a subclass) naming the operation and the container or image, so nothing above this module
knows Docker's error types. It also holds the image-building primitives `engines/images.py` uses.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import dataclasses
import json
import logging
import math
import os
import re
import socket
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.networks import DockerNetwork

from .build_progress import CompileProgress
from .progress import PullProgress
from .runtime import (
    LABEL_API_KEY,
    LABEL_HEALTH_ROUTE,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_PORT,
    LABEL_REPLICA,
    LABEL_REVISION,
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

log = logging.getLogger("endpointd.docker")

# Explicit, so that a missing socket is a clear "cannot reach" error at the first call rather than
# aiodocker's bare AssertionError when it finds no socket to default to.
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
# The stop call blocks for up to the grace period; the HTTP request gets that plus this slack.
STOP_SLACK_S = 15.0
# Pulls, builds, imports and the event stream last as long as they last.
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)
# After the event stream breaks (engine restarted), wait this long before reconnecting; missed
# events are replayed with `since`, so the delay loses nothing.
EVENTS_RECONNECT_S = 1.0
# Lines of build output kept to explain a failing build step.
BUILD_OUTPUT_TAIL = 10
# Asking a registry whether it has an image (without pulling) is bounded: an unreachable one
# (a firewall that drops packets) must not hold a suggestion or a catalog listing.
REGISTRY_CHECK_TIMEOUT_S = 10.0
MAX_REGISTRY_MESSAGE = 300
# Hosts that mean "every interface" in a port binding; replicas are then reached on loopback.
ANY_HOST = ("", "0.0.0.0", "::")
# The label filter that matches every container endpointd owns, and nothing else.
MANAGED = f"{LABEL_MANAGED}=true"
# Tasks (processes and threads) one replica may run: a fork bomb in an engine stops here instead
# of exhausting the host's pid space (pid_max is 32768 on small hosts). Engines need far fewer:
# vLLM or SGLang on 8 GPUs runs about ten processes of a few hundred threads each (PyTorch and
# tokenizer pools sized to the host's cores); the echo engine runs a handful.
PIDS_LIMIT = 4096
# Setuid binaries and file capabilities in an image grant nothing: the engine keeps at most what it
# starts with, which CapDrop/CapAdd (ContainerSpec.capabilities) bound.
NO_NEW_PRIVILEGES = "no-new-privileges:true"
# Tries of a start whose network another process removed or doubled meanwhile (_NetworkChanged).
NETWORK_ATTEMPTS = 3
# What Docker says when its address pools are spent; every endpoint has a network of its own.
POOLS_SPENT = "address pool"
POOLS_HINT = (
    "; every endpoint has a Docker network of its own and dockerd's default address pools hold about "
    "30: give it more with `default-address-pools` in /etc/docker/daemon.json "
    '(e.g. {"base": "10.210.0.0/16", "size": 24} for 256)'
)
# endpointd in a container of the engine it drives (its own image, docs/compose.yaml) reaches
# replicas by container name on their endpoint networks, which it joins, and publishes no port.
# This variable names its container (name or id) explicitly; "host" forces the host mode. Unset,
# it is detected: /.dockerenv exists and the engine knows a container of this host name (a
# container's default host name is its short id). Anywhere else (this machine's own dockerd runs
# inside a container the engine does not know of, for one) the host mode stays as it always was.
SELF_CONTAINER_ENV = "ENDPOINTD_SELF_CONTAINER"
DOCKERENV = Path("/.dockerenv")
_SHORT_ID = re.compile(r"[0-9a-f]{12}")
# Docker's container states as ours; any other ("exited", "dead", "removing") is EXITED. A paused
# container's process is alive, only frozen: it is RUNNING, and its health probe tells it hangs.
CONTAINER_STATUS = {"created": ContainerStatus.CREATED, "running": ContainerStatus.RUNNING, "paused": ContainerStatus.RUNNING}


class _NetworkChanged(Exception):
    """A container's network was removed or doubled by another process between its making and the
    container's start: the start is tried again, on the network as it is now."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _network_changed(error: aiodocker.DockerError) -> bool:
    message = str(error.message)
    return "is ambiguous" in message or ("network" in message and "not found" in message)


@asynccontextmanager
async def _wrapped(
    operation: str, target: str, error: type[RuntimeFailure] = RuntimeFailure, *, replica: bool = False
) -> AsyncIterator[None]:
    """Docker's and the transport's errors, as `error(operation, target, detail)`; with `replica`,
    a 404 (the container is gone) is ReplicaNotFound."""
    try:
        yield
    except aiodocker.DockerError as failure:
        if replica and failure.status == 404:
            raise ReplicaNotFound(operation, target, "no such container") from None
        if failure.status == 900:  # aiodocker's status for "could not connect"
            raise error(operation, target, f"cannot reach the Docker engine: {failure.message}") from None
        raise error(operation, target, f"{failure.message} (Docker status {failure.status})") from None
    except TimeoutError:
        raise error(operation, target, "the Docker engine did not answer in time") from None
    except (aiohttp.ClientError, OSError) as failure:
        raise error(operation, target, f"cannot reach the Docker engine: {type(failure).__name__}: {failure}") from None
    except ValueError as failure:  # a stream line that is not the JSON Docker promises
        raise error(operation, target, f"unexpected answer from the Docker engine: {failure}") from None


@contextmanager
def _unless_gone() -> Iterator[None]:
    """A 404 (the container is gone since we found it) or a 409 (its removal is under way) is not a
    failure of a stop or a removal: the container is, or is about to be, gone."""
    try:
        yield
    except aiodocker.DockerError as error:
        if error.status not in (404, 409):
            raise


async def _to_the_end(cleanup: Awaitable[None]) -> None:
    """Await a cleanup to its end even if the task is cancelled again meanwhile: the caller raises
    CancelledError after it anyway, and a cleanup cut short would leave its container behind."""
    task = asyncio.ensure_future(cleanup)
    while not task.done():
        with suppress(asyncio.CancelledError):
            await asyncio.shield(task)


def registry_auth_header(image: str, auth: RegistryAuth) -> str:
    """The X-Registry-Auth header: base64url of the JSON credentials, as the Docker CLI sends it."""
    first = image.split("/", 1)[0]
    server = first if "/" in image and ("." in first or ":" in first or first == "localhost") else "docker.io"
    config = {"username": auth.username, "password": auth.password or "", "serveraddress": server}
    return base64.urlsafe_b64encode(json.dumps(config).encode()).decode()


def _with_tag(image: str) -> str:
    """Docker pulls every tag of a bare name; `docker pull` means `:latest`."""
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last or "@" in last else f"{image}:latest"


def create_config(
    endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec, publish_host: str, network: str,
    publish: bool = True,
) -> dict[str, Any]:
    """The `POST /containers/create` body for one replica, on `network` (the endpoint's, by name or id),
    its port published on `publish_host` unless `publish` is false (endpointd in a container reaches
    it on that network instead).

    Nothing of the host reaches the container but the spec's mounts (the model, read-only) and its
    GPUs: no devices, no host network, pid, ipc or uts namespace, no privileges."""
    port_key = f"{spec.port}/tcp"
    host: dict[str, Any] = {
        "PortBindings": {port_key: [{"HostIp": publish_host, "HostPort": ""}]} if publish else {},  # "": a random free port
        "Binds": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts],
        "RestartPolicy": {"Name": "no"},  # the controller replaces dead replicas itself
        "NetworkMode": network,  # the endpoint's own network, never Docker's default bridge
        "Privileged": False,
        "SecurityOpt": [NO_NEW_PRIVILEGES],
        "CapDrop": ["ALL"],
        "CapAdd": list(spec.capabilities),
        "PidsLimit": PIDS_LIMIT,
        "IpcMode": "private",  # explicit: a daemon may default to "shareable"
    }
    if spec.shm_size_bytes:
        host["ShmSize"] = spec.shm_size_bytes
    if spec.cpus:
        host["NanoCpus"] = int(spec.cpus * 1e9)
    if spec.memory_bytes:
        host["Memory"] = spec.memory_bytes
        host["MemorySwap"] = spec.memory_bytes  # memory + swap: the limit is the limit, no swap on top
    if spec.gpu_device_ids:
        host["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(spec.gpu_device_ids), "Capabilities": [["gpu"]]}
        ]
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in {**spec.env, **spec.secret_env}.items()],
        "ExposedPorts": {port_key: {}},
        "Labels": {
            LABEL_MANAGED: "true",
            LABEL_NAMESPACE: endpoint.namespace,
            LABEL_NAME: endpoint.name,
            LABEL_REPLICA: replica_id,
            LABEL_REVISION: revision,
            LABEL_PORT: str(spec.port),
            LABEL_HEALTH_ROUTE: spec.health_route,
        },
        "HostConfig": host,
        "NetworkingConfig": {"EndpointsConfig": {network: {}}},
    }
    if spec.api_key:
        config["Labels"][LABEL_API_KEY] = spec.api_key
    if spec.entrypoint is not None:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.args is not None:
        config["Cmd"] = list(spec.args)
    return config


def replica_info(data: Mapping[str, Any], by_name: bool = False) -> ReplicaInfo:
    """A ReplicaInfo from `docker inspect` data; with `by_name`, its address is the container's
    name and port on its network (endpointd in a container), else its published port's."""
    labels = data["Config"]["Labels"] or {}
    state = data["State"]
    status = CONTAINER_STATUS.get(state.get("Status", ""), ContainerStatus.EXITED)
    address = None
    if status is ContainerStatus.RUNNING and by_name:
        address = f"{data['Name'].lstrip('/')}:{labels.get(LABEL_PORT, '80')}"
    elif status is ContainerStatus.RUNNING:
        bindings = (data["NetworkSettings"].get("Ports") or {}).get(f"{labels.get(LABEL_PORT, '80')}/tcp") or []
        if bindings:
            host = bindings[0]["HostIp"]
            address = f"{'127.0.0.1' if host in ANY_HOST else host}:{bindings[0]['HostPort']}"
    return ReplicaInfo(
        replica_id=labels[LABEL_REPLICA],
        endpoint=EndpointKey(labels[LABEL_NAMESPACE], labels[LABEL_NAME]),
        revision=labels.get(LABEL_REVISION, ""),
        container_id=data["Id"],
        container_name=data["Name"].lstrip("/"),
        status=status,
        address=address,
        health_route=labels.get(LABEL_HEALTH_ROUTE, "/health"),
        exit_code=state.get("ExitCode") if status is ContainerStatus.EXITED else None,
        gpus=tuple(
            device
            for request in (data.get("HostConfig") or {}).get("DeviceRequests") or ()
            for device in request.get("DeviceIDs") or ()
        ),
        api_key=labels.get(LABEL_API_KEY) or None,
    )


def usage_from_stats(stats: Mapping[str, Any]) -> Usage:
    """CPU and memory the way `docker stats` (20.10) computes them from one stats sample.

    CPU: the container's share of the host's CPU time since the previous sample, times the online
    CPUs (200 % = two CPUs busy); 0 when the sample has no previous one (`precpu_stats` empty).
    Memory: usage less the inactive page cache (cgroup v1 `total_inactive_file`, v2 `inactive_file`).
    """
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    percent = 0.0
    if pre.get("system_cpu_usage"):
        cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get("total_usage", 0)
        system_delta = cpu.get("system_cpu_usage", 0) - pre["system_cpu_usage"]
        online = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or ()) or 1
        if cpu_delta > 0 and system_delta > 0:
            percent = cpu_delta / system_delta * online * 100.0
    memory = stats.get("memory_stats") or {}
    used = int(memory.get("usage", 0))
    details = memory.get("stats") or {}
    inactive = details.get("total_inactive_file", details.get("inactive_file", 0))
    if inactive < used:
        used -= inactive
    limit = memory.get("limit")
    return Usage(cpu_percent=percent, memory_bytes=used, memory_limit_bytes=int(limit) if limit else None)


def _context_tarball(context_dir: Path, into: Path) -> None:
    """A build context as a tarball file, Python caches left out. Not compressed: the large
    contexts (the toolkit's torch wheel) are compressed already, and gzip would take longer than
    the transfer it saves over a local socket."""
    with tarfile.open(into, mode="w") as tar:
        tar.add(context_dir, arcname=".", filter=lambda item: None if "__pycache__" in item.name else item)


def translate_path(path: str, mounts: list[tuple[str, str]]) -> str:
    """`path` inside a container as a host path, through its mounts ((destination, source) pairs,
    longest destination first); RuntimeFailure when none holds it."""
    for destination, source in mounts:
        if destination == "/":
            return source.rstrip("/") + path
        if path == destination or path.startswith(destination + "/"):
            return source + path[len(destination):]
    raise RuntimeFailure(
        "start container", path,
        "endpointd runs in a container and this directory is on none of its volumes, so Docker cannot mount it "
        "into a replica: put the data dir and the model roots on volumes (see docs/compose.yaml)",
    )


class DockerRuntime:
    """`Runtime` on the local Docker engine. Create it inside a running event loop."""

    def __init__(
        self, publish_host: str = "127.0.0.1", url: str | None = None, instance: str | None = None,
        self_container: str | None = None,
    ) -> None:
        """`instance`, when given, scopes this runtime to the containers it labelled with it, so two
        endpointd instances (two data directories) on one engine never adopt or stop each other's.

        `self_container`: endpointd's own container (name or id), when it runs in one of this
        engine; "host" for the host mode; None: SELF_CONTAINER_ENV, else detected (see there)."""
        self._publish_host = publish_host
        self._self_setting = self_container if self_container is not None else os.environ.get(SELF_CONTAINER_ENV, "")
        self._self_id: str | None = None  # endpointd's container id in container mode
        self._self_mounts: list[tuple[str, str]] = []  # its (destination, host source) pairs, longest first
        self._self_known = False
        self._self_lock = asyncio.Lock()
        self._joined: set[str] = set()  # network ids endpointd's container is known to be on
        self._instance = instance
        self._managed = [MANAGED] + ([f"{LABEL_INSTANCE}={instance}"] if instance else [])
        self._docker = aiodocker.Docker(url=url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL)
        # One lock per endpoint network, held from making sure the network exists until the
        # container on it has started, and by a removal: Docker makes a network of the same name
        # twice when asked at once, and removes one that a created (not yet started) container
        # is attached to, whose start then fails.
        self._network_locks: dict[str, asyncio.Lock] = {}

    @property
    def instance(self) -> str | None:
        return self._instance

    async def own_container(self) -> str | None:
        """endpointd's own container id when it runs in a container of this engine (container
        mode: replicas are reached by name, nothing is published), else None (host mode). Found
        once, at the first call."""
        async with self._self_lock:
            if not self._self_known:
                self._self_id = await self._find_self()
                if self._self_id:
                    async with _wrapped("inspect", f"endpointd's own container {self._self_id[:12]}"):
                        data = await self._docker.containers.container(self._self_id).show()
                    self._self_mounts = sorted(
                        ((m["Destination"].rstrip("/") or "/", m["Source"]) for m in data.get("Mounts") or ()
                         if m.get("Destination") and m.get("Source")),
                        key=lambda pair: len(pair[0]), reverse=True,
                    )
                self._self_known = True
                if self._self_id:
                    log.info("endpointd runs in container %s: replicas are reached on their networks by name, "
                             "their ports are not published", self._self_id[:12])
            return self._self_id

    async def _find_self(self) -> str | None:
        setting = self._self_setting.strip()
        if setting == "host":
            return None
        if setting:
            async with _wrapped("inspect", f"endpointd's own container {setting}"):
                try:
                    return (await self._docker.containers.container(setting).show())["Id"]
                except aiodocker.DockerError as error:
                    if error.status != 404:
                        raise
            raise RuntimeFailure(
                "inspect", f"endpointd's own container {setting}",
                f"the Docker engine has no such container: set {SELF_CONTAINER_ENV} to endpointd's container "
                "name or id, or to \"host\"",
            )
        hostname = socket.gethostname()
        # Docker's default host name is the container id's first 12 hex digits; any other one (set
        # with --hostname) needs the explicit setting.
        if not DOCKERENV.exists() or not _SHORT_ID.fullmatch(hostname):
            return None
        async with _wrapped("list", f"containers of id {hostname}"):
            found = await self._docker.containers.list(filters=json.dumps({"id": [hostname]}))
        own = [container.id for container in found if container.id.startswith(hostname)]
        return own[0] if len(own) == 1 else None  # none: a container of another engine (host mode)

    def host_path(self, path: str) -> str:
        """Where `path` of endpointd's own container lies on the host (container mode): a bind
        mount's source is a path of the host, not of the container that asks for it. Raises
        RuntimeFailure when no volume of endpointd's container holds it."""
        if self._self_id is None:
            return path
        return translate_path(path, self._self_mounts)

    async def _join(self, network_id: str) -> None:
        """Put endpointd's container on an endpoint's network (container mode), once."""
        own = await self.own_container()
        if own is None or network_id in self._joined:
            return
        try:
            await DockerNetwork(self._docker, network_id).connect({"Container": own})
            log.info("joined network %s", network_id[:12])
        except aiodocker.DockerError as error:
            # Already on it (a restart, another task): Docker says "already exists" (403 or 500).
            if "already exists" not in str(error.message):
                raise
        self._joined.add(network_id)

    async def _leave(self, network_id: str) -> None:
        own = await self.own_container()
        if own is None:
            return
        self._joined.discard(network_id)
        with suppress(aiodocker.DockerError):  # not on it, or the network is gone
            await DockerNetwork(self._docker, network_id).disconnect({"Container": own, "Force": True})

    async def _info(self, data: Mapping[str, Any]) -> ReplicaInfo:
        """replica_info in this runtime's mode; in container mode, a running replica's networks
        are joined first, so that one adopted after a restart is reachable by its name too."""
        by_name = await self.own_container() is not None
        if by_name and (data.get("State") or {}).get("Status") == "running":
            for network in ((data.get("NetworkSettings") or {}).get("Networks") or {}).values():
                if network.get("NetworkID"):
                    await self._join(network["NetworkID"])
        return replica_info(data, by_name=by_name)

    async def _json_lines(
        self, path: str, method: str = "GET", *, params: Mapping[str, str], data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The JSON lines of a streaming endpoint. aiodocker has no public call for `docker import`,
        for a pull with our own auth header, nor for one event stream per caller: hence `_query`."""
        async with self._docker._query(
            path, method, params=params, data=data, headers=headers, timeout=NO_TIMEOUT
        ) as response:
            async for raw in response.content:
                if raw.strip():
                    yield json.loads(raw)

    async def _find(self, operation: str, replica_id: str) -> aiodocker.containers.DockerContainer:
        target = f"replica {replica_id}"
        async with _wrapped(operation, target):
            found = await self._docker.containers.list(
                all=True, filters=json.dumps({"label": [*self._managed, f"{LABEL_REPLICA}={replica_id}"]})
            )
        if not found:
            raise ReplicaNotFound(operation, target, "no container of endpointd has this replica id")
        return found[0]

    async def image_exists(self, image: str) -> bool:
        return await self.image_labels(image) is not None

    async def image_in_registry(self, image: str, timeout_s: float = REGISTRY_CHECK_TIMEOUT_S) -> str | None:
        """None when the image's registry has it (the engine could pull it): Docker's
        `GET /distribution/{name}/json` reads its manifest, pulling nothing. Else why not, in the
        engine's words (no such host, unauthorized, no such tag, or no answer in `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._docker._query_json(f"distribution/{_with_tag(image)}/json")
        except aiodocker.DockerError as error:
            return str(error.message)[:MAX_REGISTRY_MESSAGE]
        except TimeoutError:
            return f"its registry did not answer within {timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as error:
            return f"cannot reach the Docker engine: {type(error).__name__}"
        return None

    async def image_labels(self, image: str) -> dict[str, str] | None:
        """The image's labels, or None when there is no such image locally."""
        async with _wrapped("inspect image", image):
            try:
                data = await self._docker.images.inspect(image)
            except aiodocker.DockerError as error:
                if error.status == 404:
                    return None
                raise
        return dict((data.get("Config") or {}).get("Labels") or {})

    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, progress: ProgressCallback | None = None
    ) -> None:
        if await self.image_exists(image):
            return
        report = progress or (lambda line: None)
        report(f"pulling image {image}")
        headers = {"X-Registry-Auth": registry_auth_header(image, auth)} if auth else None
        pulled = PullProgress(image)
        told = pulled.key()
        lines = self._json_lines("images/create", "POST", params={"fromImage": _with_tag(image)}, headers=headers)
        async with _wrapped("pull image", image, ImagePullFailed), aclosing(lines):
            async for line in lines:
                if "error" in line:
                    raise ImagePullFailed("pull image", image, line["error"])
                pulled.feed(line)
                if pulled.key() != told:  # layers and whole percents, not one report per chunk
                    told = pulled.key()
                    report(pulled.message())

    async def start(
        self, endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec,
        on_created: Callable[[], None] | None = None,
    ) -> ReplicaInfo:
        name = container_name(endpoint, replica_id)
        # The work runs in a task of its own that a cancel never cuts short: a create request that
        # reached the engine makes a container whether or not we are still waiting. So on a cancel,
        # wait for the work to end, remove what it made, and only then let CancelledError go.
        work = asyncio.ensure_future(self._create_and_start(endpoint, name, replica_id, revision, spec, on_created))
        try:
            data = await asyncio.shield(work)
        except asyncio.CancelledError:
            await _to_the_end(self._discard(work, name))
            raise
        log.info("started %s (%s) from %s", name, data["Id"][:12], spec.image)  # never the env: secrets
        return await self._info(data)

    async def _create_and_start(
        self, endpoint: EndpointKey, name: str, replica_id: str, revision: str, spec: ContainerSpec,
        on_created: Callable[[], None] | None,
    ) -> dict[str, Any]:
        """Make sure the endpoint's network exists, then create, start and inspect the container on
        it; a failure after the create removes the container. A network that another process's
        runtime removed or doubled meanwhile (see _ensure_network) is made sure of again, and the
        container made anew, up to NETWORK_ATTEMPTS times."""
        async with self._network_lock(endpoint):
            for attempt in range(1, NETWORK_ATTEMPTS + 1):
                network_id = await self._ensure_network(endpoint)
                own = await self.own_container()
                if own is not None and spec.mounts:
                    spec = dataclasses.replace(spec, mounts=tuple(
                        dataclasses.replace(m, source=self.host_path(m.source)) for m in spec.mounts))
                # By id, which stays unambiguous should Docker hold two networks of this name.
                config = create_config(endpoint, replica_id, revision, spec, self._publish_host, network_id,
                                       publish=own is None)
                if self._instance:
                    config["Labels"][LABEL_INSTANCE] = self._instance
                try:
                    async with _wrapped("start container", name):
                        await self._join(network_id)  # container mode: endpointd on the network too
                        return await self._create_and_start_once(name, config, on_created)
                except _NetworkChanged as changed:
                    if attempt == NETWORK_ATTEMPTS:
                        raise RuntimeFailure("start container", name, f"{changed} (Docker status {changed.status})") from None
                    log.info("the network of %s changed during its start (%s); trying again", name, changed)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _create_and_start_once(
        self, name: str, config: dict[str, Any], on_created: Callable[[], None] | None
    ) -> dict[str, Any]:
        container = await self._docker.containers.create(config, name=name)
        try:
            if on_created is not None:
                on_created()
            await container.start()
            return await container.show()
        except BaseException as error:
            # Leave no half-started container behind; the original error is the one to report.
            with suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
                await container.delete(force=True)
            if isinstance(error, aiodocker.DockerError) and _network_changed(error):
                raise _NetworkChanged(error.status, error.message) from None
            raise

    def _network_lock(self, endpoint: EndpointKey) -> asyncio.Lock:
        return self._network_locks.setdefault(network_name(self._instance, endpoint), asyncio.Lock())

    async def _endpoint_networks(self, endpoint: EndpointKey) -> list[dict[str, Any]]:
        """The endpoint's networks of this runtime's instance (normally one), by id."""
        name, labels = network_name(self._instance, endpoint), network_labels(self._instance, endpoint)
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        found = await self._docker.networks.list(filters=filters)
        own = [n for n in found if n.get("Name") == name and (n.get("Labels") or {}).get(LABEL_INSTANCE) == self._instance]
        return sorted(own, key=lambda n: n["Id"])

    async def _ensure_network(self, endpoint: EndpointKey) -> str:
        """The id of the endpoint's network, made if there is none: a user-defined bridge of its own,
        labelled as endpointd's. Idempotent.

        Within this runtime the lock serializes it. Runtimes of two processes racing may each make
        one (Docker does not refuse the second), and Docker starts no container on a network whose
        name is ambiguous: whoever finds two keeps the one a running container is on (at most one
        can have one), else the smallest id, and removes the others."""
        name = network_name(self._instance, endpoint)
        async with _wrapped("create network", name):
            found = await self._endpoint_networks(endpoint)
            if not found:
                config = {"Name": name, "Driver": "bridge", "CheckDuplicate": True,
                          "Labels": network_labels(self._instance, endpoint)}
                try:
                    await self._docker.networks.create(config)
                    log.info("created network %s for %s", name, endpoint)
                except aiodocker.DockerError as error:
                    if POOLS_SPENT in str(error.message):
                        raise RuntimeFailure("create network", name, f"{error.message}{POOLS_HINT}") from None
                    if error.status != 409:  # 409: one of this name exists (another runtime made it just now)
                        raise
                found = await self._endpoint_networks(endpoint)
                if not found:
                    raise RuntimeFailure(
                        "create network", name,
                        "a network of this name exists that endpointd did not make for this endpoint: remove it "
                        f"(`docker network rm {name}`)",
                    )
            if len(found) == 1:
                return found[0]["Id"]
            details = [await DockerNetwork(self._docker, n["Id"]).show() for n in found]
            chosen = next((d for d in details if d.get("Containers")), details[0])
            for other in details:
                if other is not chosen:
                    with suppress(aiodocker.DockerError):  # gone already, or in use by a start under way
                        await DockerNetwork(self._docker, other["Id"]).delete()
            log.info("kept network %s (%s) of %d made at once", name, chosen["Id"][:12], len(found))
            return chosen["Id"]

    async def remove_network(self, endpoint: EndpointKey) -> None:
        name = network_name(self._instance, endpoint)
        async with self._network_lock(endpoint), _wrapped("remove network", name):
            for network in await self._endpoint_networks(endpoint):
                await self._leave(network["Id"])  # container mode: endpointd's own container is on it
                try:
                    await DockerNetwork(self._docker, network["Id"]).delete()
                except aiodocker.DockerError as error:
                    if error.status == 404:  # removed meanwhile
                        continue
                    if error.status == 403 and "active endpoints" in str(error.message):
                        log.info("kept network %s: a running container of %s still uses it", name, endpoint)
                        continue
                    raise
                log.info("removed network %s of %s", name, endpoint)

    async def networks(self) -> list[EndpointKey]:
        async with _wrapped("list", "networks"):
            found = await self._docker.networks.list(filters={"label": self._managed})
        keys = {
            EndpointKey(labels[LABEL_NAMESPACE], labels[LABEL_NAME])
            for labels in ((n.get("Labels") or {}) for n in found)
            if LABEL_NAMESPACE in labels and LABEL_NAME in labels
        }
        return sorted(keys, key=lambda key: (key.namespace, key.name))

    async def _discard(self, work: asyncio.Future[dict[str, Any]], name: str) -> None:
        """Remove the container of an abandoned start, once its work has ended."""
        try:
            data = await work
        except Exception:  # the start failed: it removed its own container, and nobody awaits its error
            return
        try:
            async with _wrapped("remove container", name):
                with _unless_gone():
                    await self._docker.containers.container(data["Id"]).delete(force=True)
        except RuntimeFailure as error:
            log.error("%s; the container of a cancelled start is left behind", error)
            return
        log.info("removed %s: its start was cancelled", name)

    async def stop(self, replica_id: str, grace_s: float) -> None:
        container = await self._find("stop container", replica_id)
        async with _wrapped("stop container", f"replica {replica_id}"):
            # Docker sends SIGTERM, waits `t` whole seconds, then SIGKILL; an exited one is left as
            # is. A paused one too: Docker 20.10 resumes it after signalling, so it gets the signal.
            with _unless_gone():
                await container.stop(t=math.ceil(grace_s), timeout=aiohttp.ClientTimeout(total=grace_s + STOP_SLACK_S))
            # Apart from the stop, so that even a refused stop (an engine that will not stop a paused
            # container) ends in a removal, which kills first.
            with _unless_gone():
                await container.delete(force=True)
        log.info("stopped replica %s", replica_id)

    async def park(self, replica_id: str, grace_s: float) -> None:
        container = await self._find("park container", replica_id)
        async with _wrapped("park container", f"replica {replica_id}", replica=True):
            # As in stop; Docker answers 304 for one that exited or never started, left as it is.
            await container.stop(t=math.ceil(grace_s), timeout=aiohttp.ClientTimeout(total=grace_s + STOP_SLACK_S))
        log.info("parked replica %s", replica_id)

    async def unpark(self, replica_id: str, on_started: Callable[[], None] | None = None) -> ReplicaInfo:
        container = await self._find("unpark container", replica_id)
        target = f"replica {replica_id}"
        # As in start: a start request that reached the engine starts the container whether or not
        # we are still waiting. So on a cancel, wait for the work to end, stop what it started, and
        # only then let CancelledError go. Not under the network lock: a wake's unparks of one
        # endpoint go at once (a removal of its network meanwhile fails them, as it would after).
        work = asyncio.ensure_future(self._start_again(container, target, on_started))
        try:
            data = await asyncio.shield(work)
        except asyncio.CancelledError:
            await _to_the_end(self._park_again(work, container, target))
            raise
        log.info("unparked replica %s (%s)", replica_id, data["Id"][:12])
        return await self._info(data)

    async def _start_again(
        self, container: aiodocker.containers.DockerContainer, target: str, on_started: Callable[[], None] | None
    ) -> dict[str, Any]:
        async with _wrapped("unpark container", target, replica=True):
            try:
                await container.start()  # Docker publishes the port anew, at a new random host port
            except aiodocker.DockerError as error:
                # A 404 is also a missing network (removed while the container was stopped).
                if error.status == 404 and "no such container" not in str(error.message).lower():
                    raise RuntimeFailure("unpark container", target, f"{error.message} (Docker status 404)") from None
                raise
        if on_started is not None:
            on_started()
        async with _wrapped("unpark container", target, replica=True):
            return await container.show()

    async def _park_again(self, work: asyncio.Future[dict[str, Any]], container: aiodocker.containers.DockerContainer,
                          target: str) -> None:
        """Stop the container of an abandoned unpark, once its work has ended (whether it started
        it or not: a stop of a stopped container changes nothing)."""
        with suppress(Exception):  # a failed start left it stopped, and nobody awaits its error
            await work
        try:
            async with _wrapped("park container", target):
                with _unless_gone():
                    await container.stop(t=0, timeout=aiohttp.ClientTimeout(total=STOP_SLACK_S))
        except RuntimeFailure as error:
            log.error("%s; the container of a cancelled unpark may be left running", error)
            return
        log.info("parked %s again: its unpark was cancelled", target)

    async def list(self, endpoint: EndpointKey | None = None) -> list[ReplicaInfo]:
        labels = list(self._managed)
        if endpoint is not None:
            labels += [f"{LABEL_NAMESPACE}={endpoint.namespace}", f"{LABEL_NAME}={endpoint.name}"]
        found = []
        async with _wrapped("list", "containers"):
            for container in await self._docker.containers.list(all=True, filters=json.dumps({"label": labels})):
                try:
                    found.append(await self._info(await container.show()))
                except aiodocker.DockerError as error:
                    if error.status != 404:  # 404: removed between the listing and its inspection
                        raise
        return found

    async def inspect(self, replica_id: str) -> ReplicaInfo:
        container = await self._find("inspect", replica_id)
        async with _wrapped("inspect", f"replica {replica_id}", replica=True):
            return await self._info(await container.show())

    async def logs(self, replica_id: str, tail: int = 50) -> builtins.list[str]:
        container = await self._find("logs", replica_id)
        if tail <= 0:
            return []
        async with _wrapped("logs", f"replica {replica_id}", replica=True):
            chunks = await container.log(stdout=True, stderr=True, tail=tail)
        return "".join(chunks).splitlines()[-tail:]

    async def follow_logs(self, replica_id: str, tail: int = 0) -> AsyncGenerator[str, None]:
        """Lines as the container writes them (after its last `tail` ones), until it stops."""
        container = await self._find("follow logs", replica_id)
        chunks = container.log(stdout=True, stderr=True, follow=True, tail=tail)
        buffer = ""
        # aiodocker types the stream as an AsyncIterator; it is an async generator (aclose).
        async with _wrapped("follow logs", f"replica {replica_id}", replica=True), aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                *lines, buffer = (buffer + chunk).split("\n")
                for line in lines:
                    yield line
        if buffer:
            yield buffer

    async def usage(self, replica_id: str) -> Usage:
        container = await self._find("stats", replica_id)
        async with _wrapped("stats", f"replica {replica_id}", replica=True):
            samples = await container.stats(stream=False)
        return usage_from_stats(samples[0] if samples else {})

    def events(self) -> AsyncGenerator[ReplicaEvent, None]:
        """Deaths of containers endpointd owns, from this call on. The stream reconnects when
        Docker drops it and replays what happened meanwhile (`since`), so no death is lost."""
        return self._events_since(time.time())  # a timestamp for Docker, hence the wall clock

    async def _events_since(self, start: float) -> AsyncGenerator[ReplicaEvent, None]:
        since = f"{start:.9f}"
        filters = json.dumps({"type": ["container"], "event": ["die"], "label": self._managed})
        while True:
            lines = self._json_lines("events", params={"filters": filters, "since": since})
            try:
                async with _wrapped("watch", "container events"), aclosing(lines):
                    async for event in lines:
                        since = f"{(event['timeNano'] + 1) / 1e9:.9f}"  # resume after it, not at it
                        attrs = event.get("Actor", {}).get("Attributes", {})
                        if LABEL_REPLICA in attrs:
                            code = attrs.get("exitCode")
                            yield ReplicaEvent(
                                EventKind.DIED,
                                attrs[LABEL_REPLICA],
                                EndpointKey(attrs.get(LABEL_NAMESPACE, ""), attrs.get(LABEL_NAME, "")),
                                int(code) if code is not None else None,
                            )
                log.warning("the Docker event stream ended; reconnecting in %g s", EVENTS_RECONNECT_S)
            except RuntimeFailure as error:
                log.warning("%s; reconnecting in %g s", error, EVENTS_RECONNECT_S)
            await asyncio.sleep(EVENTS_RECONNECT_S)

    async def import_rootfs(self, tarball: Path, tag: str) -> None:
        """`docker import`: a root filesystem tarball becomes the image `tag`."""
        repo, _, version = tag.partition(":")
        params = {"fromSrc": "-", "repo": repo, "tag": version or "latest"}
        with tarball.open("rb") as body:
            lines = self._json_lines("images/create", "POST", params=params, data=body, headers={"Content-Type": "application/x-tar"})
            async with _wrapped("import image", tag), aclosing(lines):
                async for line in lines:
                    if "error" in line:
                        raise RuntimeFailure("import image", tag, line["error"])

    async def build_image(
        self, context_dir: Path, tag: str, dockerfile: str = "Dockerfile", progress: ProgressCallback | None = None,
        labels: dict[str, str] | None = None, buildargs: dict[str, str] | None = None, nocache: bool = False,
    ) -> None:
        """`docker build` of a local context (streamed from a temporary tarball, so a large one is
        never held in memory); a failure names the failing step and its output."""
        params = {"t": tag, "dockerfile": dockerfile, "rm": "1", "forcerm": "1"}
        if labels:
            params["labels"] = json.dumps(labels)
        if buildargs:
            params["buildargs"] = json.dumps(buildargs)
        if nocache:
            params["nocache"] = "1"
        headers = {"Content-Type": "application/x-tar"}
        step, output, compiled = "", deque[str](maxlen=BUILD_OUTPUT_TAIL), CompileProgress()
        with tempfile.TemporaryDirectory(prefix="endpointd-context-") as tmp:
            tarball = Path(tmp) / "context.tar"
            await asyncio.to_thread(_context_tarball, context_dir, tarball)
            with tarball.open("rb") as body:
                lines = self._json_lines("build", "POST", params=params, data=body, headers=headers)
                async with _wrapped("build image", tag), aclosing(lines):
                    async for line in lines:
                        if "error" in line:
                            where = f" (at {step})" if step else ""
                            raise RuntimeFailure("build image", tag, f"{line['error'].strip()}{where}\n" + "\n".join(output))
                        for text in line.get("stream", "").splitlines():
                            if text.startswith("Step "):
                                step = text
                                output.clear()
                                compiled.reset()
                                if progress:
                                    progress(f"{tag}: {text}")
                            elif text.strip():
                                output.append(text)
                                counted = compiled.see(text)
                                if counted and progress:
                                    progress(f"{tag}: compiling, {counted}")

    async def close(self) -> None:
        await self._docker.close()
