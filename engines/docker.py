"""The Docker runtime: the only module that imports aiodocker.

Every aiodocker error (and every failure to reach the engine) is wrapped here into `RuntimeError_`
(or a subclass) naming the operation and the container or image, so nothing above this module
knows Docker's error types. It also holds the image-building primitives `engines/images.py` uses.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import os
import tarfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from .runtime import (
    LABEL_HEALTH_ROUTE,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_PORT,
    LABEL_REPLICA,
    LABEL_REVISION,
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
# Hosts that mean "every interface" in a port binding; replicas are then reached on loopback.
ANY_HOST = ("", "0.0.0.0", "::")
# The label filter that matches every container endpointd owns, and nothing else.
MANAGED = f"{LABEL_MANAGED}=true"
# Docker's container states as ours; any other ("exited", "dead", "removing") is EXITED. A paused
# container's process is alive, only frozen: it is RUNNING, and its health probe tells it hangs.
CONTAINER_STATUS = {"created": ReplicaStatus.CREATED, "running": ReplicaStatus.RUNNING, "paused": ReplicaStatus.RUNNING}


@asynccontextmanager
async def _wrapped(
    operation: str, target: str, error: type[RuntimeError_] = RuntimeError_, *, replica: bool = False
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
    endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec, publish_host: str
) -> dict[str, Any]:
    """The `POST /containers/create` body for one replica."""
    port_key = f"{spec.port}/tcp"
    host: dict[str, Any] = {
        "PortBindings": {port_key: [{"HostIp": publish_host, "HostPort": ""}]},  # "": a random free port
        "Binds": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts],
        "RestartPolicy": {"Name": "no"},  # the controller replaces dead replicas itself
    }
    if spec.shm_size_bytes:
        host["ShmSize"] = spec.shm_size_bytes
    if spec.cpus:
        host["NanoCpus"] = int(spec.cpus * 1e9)
    if spec.memory_bytes:
        host["Memory"] = spec.memory_bytes
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
    }
    if spec.entrypoint is not None:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.args is not None:
        config["Cmd"] = list(spec.args)
    return config


def replica_info(data: Mapping[str, Any]) -> ReplicaInfo:
    """A ReplicaInfo from `docker inspect` data."""
    labels = data["Config"]["Labels"] or {}
    state = data["State"]
    status = CONTAINER_STATUS.get(state.get("Status", ""), ReplicaStatus.EXITED)
    address = None
    if status is ReplicaStatus.RUNNING:
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
        exit_code=state.get("ExitCode") if status is ReplicaStatus.EXITED else None,
        gpus=tuple(
            device
            for request in (data.get("HostConfig") or {}).get("DeviceRequests") or ()
            for device in request.get("DeviceIDs") or ()
        ),
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


def _context_tarball(context_dir: Path) -> bytes:
    """A build context as a gzipped tarball, Python caches left out."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(context_dir, arcname=".", filter=lambda item: None if "__pycache__" in item.name else item)
    return buffer.getvalue()


class DockerRuntime:
    """`Runtime` on the local Docker engine. Create it inside a running event loop."""

    def __init__(self, publish_host: str = "127.0.0.1", url: str | None = None, instance: str | None = None) -> None:
        """`instance`, when given, scopes this runtime to the containers it labelled with it, so two
        endpointd instances (two data directories) on one engine never adopt or stop each other's."""
        self._publish_host = publish_host
        self._instance = instance
        self._managed = [MANAGED] + ([f"{LABEL_INSTANCE}={instance}"] if instance else [])
        self._docker = aiodocker.Docker(url=url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL)

    async def _json_lines(
        self, path: str, method: str = "GET", *, params: Mapping[str, str], data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
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
        seen: set[tuple[str, str]] = set()
        lines = self._json_lines("images/create", "POST", params={"fromImage": _with_tag(image)}, headers=headers)
        async with _wrapped("pull image", image, ImagePullFailed), aclosing(lines):
            async for line in lines:
                if "error" in line:
                    raise ImagePullFailed("pull image", image, line["error"])
                step = (line.get("id", ""), line.get("status", ""))
                if step[1] and step not in seen:  # one line per layer and phase, not one per chunk
                    seen.add(step)
                    report(f"{image}: {' '.join(filter(None, step))}")

    async def start(self, endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec) -> ReplicaInfo:
        name = container_name(endpoint, replica_id)
        config = create_config(endpoint, replica_id, revision, spec, self._publish_host)
        if self._instance:
            config["Labels"][LABEL_INSTANCE] = self._instance
        # The work runs in a task of its own that a cancel never cuts short: a create request that
        # reached the engine makes a container whether or not we are still waiting. So on a cancel,
        # wait for the work to end, remove what it made, and only then let CancelledError go.
        work = asyncio.ensure_future(self._create_and_start(name, config))
        try:
            data = await asyncio.shield(work)
        except asyncio.CancelledError:
            await _to_the_end(self._discard(work, name))
            raise
        log.info("started %s (%s) from %s", name, data["Id"][:12], spec.image)  # never the env: secrets
        return replica_info(data)

    async def _create_and_start(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Create, start and inspect the container; a failure after the create removes it."""
        async with _wrapped("start container", name):
            container = await self._docker.containers.create(config, name=name)
            try:
                await container.start()
                return await container.show()
            except BaseException:
                # Leave no half-started container behind; the original error is the one to report.
                with suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
                    await container.delete(force=True)
                raise

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
        except RuntimeError_ as error:
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

    async def list(self, endpoint: EndpointKey | None = None) -> list[ReplicaInfo]:
        labels = list(self._managed)
        if endpoint is not None:
            labels += [f"{LABEL_NAMESPACE}={endpoint.namespace}", f"{LABEL_NAME}={endpoint.name}"]
        found = []
        async with _wrapped("list", "containers"):
            for container in await self._docker.containers.list(all=True, filters=json.dumps({"label": labels})):
                try:
                    found.append(replica_info(await container.show()))
                except aiodocker.DockerError as error:
                    if error.status != 404:  # 404: removed between the listing and its inspection
                        raise
        return found

    async def inspect(self, replica_id: str) -> ReplicaInfo:
        container = await self._find("inspect", replica_id)
        async with _wrapped("inspect", f"replica {replica_id}", replica=True):
            return replica_info(await container.show())

    async def logs(self, replica_id: str, tail: int = 50) -> list[str]:
        container = await self._find("logs", replica_id)
        if tail <= 0:
            return []
        async with _wrapped("logs", f"replica {replica_id}", replica=True):
            chunks = await container.log(stdout=True, stderr=True, tail=tail)
        return "".join(chunks).splitlines()[-tail:]

    async def follow_logs(self, replica_id: str, tail: int = 0) -> AsyncIterator[str]:
        """Lines as the container writes them (after its last `tail` ones), until it stops."""
        container = await self._find("follow logs", replica_id)
        chunks = container.log(stdout=True, stderr=True, follow=True, tail=tail)
        buffer = ""
        async with _wrapped("follow logs", f"replica {replica_id}", replica=True), aclosing(chunks):
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

    def events(self) -> AsyncIterator[ReplicaEvent]:
        """Deaths of containers endpointd owns, from this call on. The stream reconnects when
        Docker drops it and replays what happened meanwhile (`since`), so no death is lost."""
        return self._events_since(time.time())  # a timestamp for Docker, hence the wall clock

    async def _events_since(self, start: float) -> AsyncIterator[ReplicaEvent]:
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
            except RuntimeError_ as error:
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
                        raise RuntimeError_("import image", tag, line["error"])

    async def build_image(
        self, context_dir: Path, tag: str, dockerfile: str = "Dockerfile", progress: ProgressCallback | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        """`docker build` of a small local context; a failure names the failing step and its output."""
        params = {"t": tag, "dockerfile": dockerfile, "rm": "1", "forcerm": "1"}
        if labels:
            params["labels"] = json.dumps(labels)
        headers = {"Content-Type": "application/x-tar", "Content-Encoding": "gzip"}
        step, output = "", deque[str](maxlen=BUILD_OUTPUT_TAIL)
        lines = self._json_lines("build", "POST", params=params, data=_context_tarball(context_dir), headers=headers)
        async with _wrapped("build image", tag), aclosing(lines):
            async for line in lines:
                if "error" in line:
                    where = f" (at {step})" if step else ""
                    raise RuntimeError_("build image", tag, f"{line['error'].strip()}{where}\n" + "\n".join(output))
                for text in line.get("stream", "").splitlines():
                    if text.startswith("Step "):
                        step = text
                        output.clear()
                        if progress:
                            progress(f"{tag}: {text}")
                    elif text.strip():
                        output.append(text)

    async def close(self) -> None:
        await self._docker.close()
