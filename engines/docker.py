"""The Docker runtime: the only module that imports aiodocker.

Every aiodocker error is wrapped here into `RuntimeError_` (or a subclass), naming the operation
and the container or image, so nothing above this module knows Docker's error types.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from .runtime import (
    LABEL_HEALTH_ROUTE,
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

MANAGED_FILTER = {"label": [f"{LABEL_MANAGED}=true"]}
# Docker's own `stop` HTTP call blocks for the grace period; give the HTTP request that plus slack.
STOP_SLACK_S = 15.0


@asynccontextmanager
async def _wrapped(operation: str, target: str, not_found: bool = False):
    try:
        yield
    except aiodocker.DockerError as error:
        if not_found and error.status == 404:
            raise ReplicaNotFound(operation, target, "no such container") from None
        raise RuntimeError_(operation, target, f"{error.message} (Docker status {error.status})") from None
    except (aiohttp.ClientError, OSError) as error:
        raise RuntimeError_(operation, target, f"cannot reach the Docker engine: {error}") from None


def _auth_header(auth: RegistryAuth | None) -> dict[str, str] | None:
    if auth is None:
        return None
    return {"username": auth.username, "password": auth.password or ""}


def _create_config(endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec, publish_host: str) -> dict[str, Any]:
    port_key = f"{spec.port}/tcp"
    env = {**spec.env, **spec.secret_env}
    host: dict[str, Any] = {
        "PortBindings": {port_key: [{"HostIp": publish_host, "HostPort": ""}]},
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
        "Env": [f"{k}={v}" for k, v in env.items()],
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


def _info(data: dict[str, Any]) -> ReplicaInfo:
    """A ReplicaInfo from `docker inspect` data."""
    labels = data["Config"]["Labels"] or {}
    state = data["State"]
    status = state.get("Status", "")
    address = None
    if status == "running":
        bindings = (data["NetworkSettings"].get("Ports") or {}).get(f"{labels.get(LABEL_PORT, '80')}/tcp") or []
        if bindings:
            address = f"{bindings[0]['HostIp']}:{bindings[0]['HostPort']}"
    return ReplicaInfo(
        replica_id=labels[LABEL_REPLICA],
        endpoint=EndpointKey(labels[LABEL_NAMESPACE], labels[LABEL_NAME]),
        revision=labels.get(LABEL_REVISION, ""),
        container_id=data["Id"],
        container_name=data["Name"].lstrip("/"),
        status=ReplicaStatus.RUNNING if status == "running" else (
            ReplicaStatus.CREATED if status == "created" else ReplicaStatus.EXITED
        ),
        address=address,
        health_route=labels.get(LABEL_HEALTH_ROUTE, "/health"),
        exit_code=None if status == "running" else state.get("ExitCode"),
    )


class DockerRuntime:
    def __init__(self, publish_host: str = "127.0.0.1", url: str | None = None) -> None:
        self._publish_host = publish_host
        self._docker = aiodocker.Docker(url=url)

    async def _find(self, replica_id: str) -> aiodocker.containers.DockerContainer:
        async with _wrapped("find", f"replica {replica_id}"):
            found = await self._docker.containers.list(
                all=True, filters=json.dumps({"label": [f"{LABEL_MANAGED}=true", f"{LABEL_REPLICA}={replica_id}"]})
            )
        if not found:
            raise ReplicaNotFound("find", f"replica {replica_id}", "no container of endpointd has this replica id")
        return found[0]

    async def image_exists(self, image: str) -> bool:
        try:
            await self._docker.images.inspect(image)
            return True
        except aiodocker.DockerError as error:
            if error.status == 404:
                return False
            raise RuntimeError_("inspect image", image, error.message) from None

    async def ensure_image(self, image: str, auth: RegistryAuth | None = None, progress: ProgressCallback | None = None) -> None:
        if await self.image_exists(image):
            return
        if progress:
            progress(f"pulling image {image}")
        try:
            async for line in self._docker.images.pull(image, auth=_auth_header(auth), stream=True):
                if "error" in line:
                    raise aiodocker.DockerError(500, {"message": line["error"]})
                if progress and line.get("status") and line.get("progress") is None:
                    progress(f"pulling image {image}: {line['status']}")
        except aiodocker.DockerError as error:
            raise ImagePullFailed("pull image", image, f"{error.message}; is the name right, and is the registry reachable?") from None
        except (aiohttp.ClientError, OSError) as error:
            raise ImagePullFailed("pull image", image, f"cannot reach the Docker engine: {error}") from None

    async def start(self, endpoint: EndpointKey, replica_id: str, revision: str, spec: ContainerSpec) -> ReplicaInfo:
        name = container_name(endpoint, replica_id)
        config = _create_config(endpoint, replica_id, revision, spec, self._publish_host)
        async with _wrapped("start container", name):
            container = await self._docker.containers.create(config, name=name)
            try:
                await container.start()
                data = await container.show()
            except aiodocker.DockerError:
                await container.delete(force=True)
                raise
        log.info("started %s (%s) from %s", name, data["Id"][:12], spec.image)
        return _info(data)

    async def stop(self, replica_id: str, grace_s: float) -> None:
        container = await self._find(replica_id)
        target = f"replica {replica_id}"
        async with _wrapped("stop container", target, not_found=True):
            try:
                await container.stop(t=max(0, int(round(grace_s))), timeout=grace_s + STOP_SLACK_S)
            except aiodocker.DockerError as error:
                if error.status not in (304, 404):  # 304: already stopped
                    raise
            await container.delete(force=True)

    async def list(self, endpoint: EndpointKey | None = None) -> list[ReplicaInfo]:
        labels = [f"{LABEL_MANAGED}=true"]
        if endpoint is not None:
            labels += [f"{LABEL_NAMESPACE}={endpoint.namespace}", f"{LABEL_NAME}={endpoint.name}"]
        async with _wrapped("list", "containers"):
            found = await self._docker.containers.list(all=True, filters=json.dumps({"label": labels}))
            return [_info(await c.show()) for c in found]

    async def inspect(self, replica_id: str) -> ReplicaInfo:
        container = await self._find(replica_id)
        async with _wrapped("inspect", f"replica {replica_id}", not_found=True):
            return _info(await container.show())

    async def logs(self, replica_id: str, tail: int = 50) -> list[str]:
        container = await self._find(replica_id)
        async with _wrapped("logs", f"replica {replica_id}", not_found=True):
            chunks = await container.log(stdout=True, stderr=True, tail=tail)
        return "".join(chunks).splitlines()[-tail:] if tail else "".join(chunks).splitlines()

    async def follow_logs(self, replica_id: str, tail: int = 0) -> AsyncIterator[str]:
        container = await self._find(replica_id)
        buffer = ""
        async with _wrapped("follow logs", f"replica {replica_id}", not_found=True):
            async for chunk in container.log(stdout=True, stderr=True, follow=True, tail=tail):
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    yield line
        if buffer:
            yield buffer

    async def usage(self, replica_id: str) -> Usage:
        container = await self._find(replica_id)
        async with _wrapped("stats", f"replica {replica_id}", not_found=True):
            samples = await container.stats(stream=False)
        return usage_from_stats(samples[0] if samples else {})

    async def events(self) -> AsyncIterator[ReplicaEvent]:
        """Deaths of containers endpointd owns. The stream reconnects if Docker drops it."""
        while True:
            params = {"filters": json.dumps({"type": ["container"], "event": ["die"], **MANAGED_FILTER})}
            try:
                async with self._docker._query("events", params=params, timeout=None) as response:
                    async for raw in response.content:
                        if not raw.strip():
                            continue
                        event = json.loads(raw)
                        attrs = event.get("Actor", {}).get("Attributes", {})
                        if LABEL_REPLICA not in attrs:
                            continue
                        code = attrs.get("exitCode")
                        yield ReplicaEvent(
                            EventKind.DIED,
                            attrs[LABEL_REPLICA],
                            EndpointKey(attrs.get(LABEL_NAMESPACE, ""), attrs.get(LABEL_NAME, "")),
                            int(code) if code is not None else None,
                        )
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as error:
                log.warning("Docker event stream broke (%s); reconnecting", error)
                await asyncio.sleep(1.0)

    # --- images built locally (engines/images.py) ------------------------------------------

    async def import_rootfs(self, chunks: AsyncIterator[bytes], tag: str) -> None:
        """`docker import`: a root filesystem tarball becomes an image."""
        repo, _, version = tag.partition(":")
        async with _wrapped("import image", tag):
            async with self._docker._query(
                "images/create", "POST",
                params={"fromSrc": "-", "repo": repo, "tag": version or "latest"},
                data=chunks, headers={"Content-Type": "application/x-tar"}, timeout=None,
            ) as response:
                body = await response.text()
        for line in body.splitlines():
            if '"error"' in line:
                raise RuntimeError_("import image", tag, json.loads(line)["error"])

    async def build_image(self, context_dir: Path, tag: str) -> None:
        """`docker build` of a small local context (sent as a gzipped tarball)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(context_dir, arcname=".")
        buffer.seek(0)
        async with _wrapped("build image", tag):
            lines = await self._docker.images.build(fileobj=buffer, encoding="gzip", tag=tag, stream=False)
        for line in lines:
            if "error" in line:
                raise RuntimeError_("build image", tag, line["error"].strip())

    async def close(self) -> None:
        await self._docker.close()


def usage_from_stats(stats: dict[str, Any]) -> Usage:
    """CPU percent the way `docker stats` computes it; 0 on the first sample (no previous one)."""
    cpu = stats.get("cpu_stats", {})
    pre = stats.get("precpu_stats", {})
    cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or []) or 1
    percent = cpu_delta / system_delta * online * 100.0 if cpu_delta > 0 and system_delta > 0 else 0.0
    memory = stats.get("memory_stats", {})
    limit = memory.get("limit")
    return Usage(cpu_percent=percent, memory_bytes=int(memory.get("usage", 0)), memory_limit_bytes=int(limit) if limit else None)

