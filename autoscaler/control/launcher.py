"""Starting one replica: model artifacts, image, hardware, container, readiness — in that order,
each step reported to the endpoint's status message."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp

from autoscaler.model.intent import Intent
from autoscaler.model.spec import EndpointSpec
from engines import artifacts, hardware, presets, readiness, sleep
from engines.capacity import Need
from engines.downloads import hub_cache
from engines.gpus import Gpu, GpuAllocator, GpuSampler
from engines.progress import download_message
from engines.runtime import ReplicaInfo, Runtime

log = logging.getLogger("endpointd.launcher")

# A replica found after a restart must answer its health route this fast to be adopted.
HEALTH_CHECK_S = 5.0
# Bytes of randomness in a replica's engine API key (secrets.token_urlsafe: 43 characters).
API_KEY_BYTES = 32
# An engine's sleep or wake call: vLLM's level-1 sleep moves the weights to host memory, which
# takes seconds for a large model (vLLM's published figures: up to tens of seconds at 70B).
SLEEP_CALL_S = 120.0
# What `check` passes for the key: the same validation as a launch, without making a secret.
CHECK_API_KEY = "check"


class EngineLauncher:
    def __init__(
        self,
        runtime: Runtime,
        session: aiohttp.ClientSession,
        *,
        inventory: Sequence[Gpu],
        allocator: GpuAllocator,
        downloads: Path,
        ready_deadline_s: float,
        cpu_count: int,
        memory_bytes: int,
        default_images: Mapping[str, str] | None = None,
        gpu_sampler: GpuSampler | None = None,
    ) -> None:
        self._runtime = runtime
        self._session = session
        self._inventory = inventory
        self._allocator = allocator
        self._downloads = downloads  # DATA_DIR/hub: one Hub cache per namespace (downloads.hub_cache)
        self._ready_deadline_s = ready_deadline_s
        self._cpu_count = cpu_count
        self._memory_bytes = memory_bytes
        self._default_images = default_images
        self._gpu_sampler = gpu_sampler

    def resources(self, accelerator: str, instance_type: str, instance_size: str) -> hardware.Resources:
        """Raises HardwareError naming what this host offers."""
        return hardware.resolve(
            accelerator, instance_type, instance_size,
            cpu_count=self._cpu_count, memory_bytes=self._memory_bytes, inventory=self._inventory,
        )

    def check(self, spec: EndpointSpec) -> None:
        """Refuse at the API what could never start here (HardwareError, PresetError → 400)."""
        compute, model = spec.compute, spec.model
        resources = self.resources(compute.accelerator, compute.instance_type, compute.instance_size)
        placeholder_gpus = tuple(f"gpu-{i}" for i in range(resources.gpu_count))
        presets.build_container_spec(
            model.image, model_dir="/repository", served_model_name=spec.name,
            resources=replace(resources, gpu_device_ids=placeholder_gpus), env=model.env, secrets=model.secrets,
            command=model.command, args=model.args, default_images=self._default_images, api_key=CHECK_API_KEY,
            task=getattr(model, "task", None), framework=getattr(model, "framework", None),
            sleep_after_s=compute.scaling.sleep_after_s,
        )

    def gpu_need(self, intent: Intent) -> tuple[int, str]:
        compute = intent.spec.compute
        resources = self.resources(compute.accelerator, compute.instance_type, compute.instance_size)
        return (resources.gpu_count, compute.instance_type) if resources.gpu_count else (0, "")

    def needs(self, intent: Intent) -> Need:
        """What one replica of the endpoint holds while it exists (HostCapacity accounts it)."""
        return self.needs_of(intent.spec)

    def needs_of(self, spec: EndpointSpec) -> Need:
        """The same, from an endpoint spec: its GPUs, and the CPU and memory limits its container
        gets (a GPU instance's memory limit is its share of the host's, `hardware.gpu_memory_share`)."""
        compute = spec.compute
        resources = self.resources(compute.accelerator, compute.instance_type, compute.instance_size)
        return Need(
            gpus=resources.gpu_count, gpu_type=compute.instance_type if resources.gpu_count else "",
            cpus=resources.cpus or 0.0, memory_bytes=resources.memory_bytes or 0, label=compute.instance_size,
        )

    async def launch(
        self, intent: Intent, replica_id: str, gpus: tuple[str, ...], report: Callable[[str], None],
        mark: Callable[[str], None] = lambda point: None,
    ) -> ReplicaInfo:
        spec = intent.spec
        compute, model = spec.compute, spec.model
        resources = self.resources(compute.accelerator, compute.instance_type, compute.instance_size)
        resources = replace(resources, gpu_device_ids=gpus)

        model_dir = None  # an engine that reads no model (echo) named by a Hub id: nothing fetched or mounted
        if artifacts.is_local(model.repository) or presets.reads_model(model.image):
            report(f"fetching model artifacts of {model.repository}")
            # The commit pinned at create (a local directory: as it is), only the files its engine
            # needs, into the namespace's own cache: no other namespace's endpoint is given them.
            model_dir = await artifacts.fetch(
                model.repository, model.revision, hub_cache(self._downloads, intent.key.namespace),
                allow_patterns=model.download_pattern,
                progress=lambda done, total: report(download_message(model.repository, done, total)),
            )
            await self._check_local_content(spec.name, model.repository, model.revision, model_dir)
        # A key of the replica's own: a replica's engine answers only who holds it (the proxy, the
        # probes), not another endpoint's engine nor a local process that found its port. Kept on
        # its container, so a restarted endpointd still has it (ReplicaInfo.api_key).
        container = presets.build_container_spec(
            model.image,
            model_dir=None if model_dir is None else str(model_dir),
            served_model_name=spec.name,
            resources=resources,
            env=model.env,
            secrets=model.secrets,
            command=model.command,
            args=model.args,
            default_images=self._default_images,
            api_key=secrets.token_urlsafe(API_KEY_BYTES),
            task=model.task,  # the toolkit's pipeline and weights
            framework=model.framework,
            sleep_after_s=compute.scaling.sleep_after_s,
        )
        report(f"pulling image {container.image}")
        await self._runtime.ensure_image(container.image, container.registry_auth, report)
        report(f"starting replica {replica_id}")
        mark("creating")
        info = await self._runtime.start(
            intent.key, replica_id, str(intent.revision), container, on_created=lambda: mark("created"))
        mark("started")
        report(f"waiting for replica {replica_id} to answer {container.health_route}" if container.health_route
               else f"waiting for replica {replica_id} to accept connections on its port")
        return await readiness.wait_ready(
            self._runtime, info, session=self._session, deadline_s=self._ready_deadline_s
        )

    async def unpark(
        self, intent: Intent, replica_id: str, report: Callable[[str], None],
        mark: Callable[[str], None] = lambda point: None,
    ) -> ReplicaInfo:
        report(f"starting parked replica {replica_id} again")
        mark("unparking")
        info = await self._runtime.unpark(replica_id)
        mark("started")
        report(f"waiting for replica {replica_id} to answer {info.health_route or 'on its port'}")
        return await readiness.wait_ready(self._runtime, info, session=self._session, deadline_s=self._ready_deadline_s)

    def sleeps_by_itself(self, intent: Intent) -> bool:
        kind = sleep.sleep_kind(intent.spec.model.image)
        return kind is not None and not sleep.driven(kind)

    def _sleep_kind(self, intent: Intent) -> sleep.SleepKind:
        kind = sleep.sleep_kind(intent.spec.model.image)
        if kind is None:
            raise ValueError(f"the {intent.spec.model.variant} engine cannot sleep")
        return kind

    async def sleep(self, intent: Intent, replica: ReplicaInfo) -> None:
        await sleep.put_to_sleep(self._session, replica, self._sleep_kind(intent), SLEEP_CALL_S)

    async def wake(self, intent: Intent, replica: ReplicaInfo, mark: Callable[[str], None] = lambda point: None) -> None:
        mark("waking")
        await sleep.wake_up(self._session, replica, self._sleep_kind(intent), SLEEP_CALL_S)
        mark("awake")
        await readiness.wait_ready(self._runtime, replica, session=self._session, deadline_s=self._ready_deadline_s)

    async def is_sleeping(self, intent: Intent, replica: ReplicaInfo) -> bool | None:
        return await sleep.is_sleeping(self._session, replica, self._sleep_kind(intent), HEALTH_CHECK_S)

    @staticmethod
    async def _check_local_content(name: str, repository: str, revision: str | None, model_dir: Path) -> None:
        """A local directory cannot be pinned like a commit: say so in the log when its content hash
        moved since the endpoint recorded it, since replicas may then run different files."""
        if not artifacts.is_local(repository) or not (revision or "").startswith(artifacts.LOCAL_REVISION_PREFIX):
            return
        now = await asyncio.to_thread(artifacts.content_hash, model_dir)
        if now != revision:
            log.warning("endpoint %s: the local repository %s changed since it was recorded (%s, now %s); replicas "
                        "may run different files: update the endpoint with model.revision null to record it again",
                        name, repository, revision, now)

    async def utilization(self, intent: Intent, replica_ids: list[str]) -> float | None:
        """Average utilization of the replicas, in percent: GPU (NVML) on GPU instances, else CPU
        (Docker stats) relative to each replica's CPU limit."""
        compute = intent.spec.compute
        resources = self.resources(compute.accelerator, compute.instance_type, compute.instance_size)
        if resources.gpu_count:
            if self._gpu_sampler is None:
                return None
            ids = [gpu for rid in replica_ids for gpu in self._allocator.held_by(rid)]
            values = list(self._gpu_sampler.utilization(ids).values())
        else:
            usages = await asyncio.gather(*(self._runtime.usage(rid) for rid in replica_ids), return_exceptions=True)
            cpus = resources.cpus or self._cpu_count
            values = [u.cpu_percent / cpus for u in usages if not isinstance(u, BaseException)]
        return sum(values) / len(values) if values else None

    async def healthy(self, replica: ReplicaInfo) -> bool:
        if replica.address is not None and not replica.health_route:  # no health route: its port
            return await readiness.accepts_connections(replica.address)
        try:
            async with self._session.get(
                f"http://{replica.address}{replica.health_route}", timeout=aiohttp.ClientTimeout(total=HEALTH_CHECK_S),
                headers=readiness.auth_headers(replica),
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
