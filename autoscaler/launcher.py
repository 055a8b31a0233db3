"""Starting one replica: model artifacts, image, hardware, container, readiness — in that order,
each step reported to the endpoint's status message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp

from engines import artifacts, hardware, presets, readiness
from engines.gpus import Gpu, GpuAllocator, GpuSampler, NoCapacity
from engines.runtime import ReplicaInfo, Runtime

from .controller import Desired, WaitingForCapacity

# A replica found after a restart must answer its health route this fast to be adopted.
HEALTH_CHECK_S = 5.0


class EngineLauncher:
    def __init__(
        self,
        runtime: Runtime,
        session: aiohttp.ClientSession,
        *,
        inventory: Sequence[Gpu],
        allocator: GpuAllocator,
        cache_dir: Path,
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
        self._cache_dir = cache_dir
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

    def check(self, spec) -> None:
        """Refuse at the API what could never start here (HardwareError, PresetError → 400)."""
        compute, model = spec.compute, spec.model
        resources = self.resources(compute.accelerator, compute.instance_type, compute.instance_size)
        placeholder_gpus = tuple(f"gpu-{i}" for i in range(resources.gpu_count))
        presets.build_container_spec(
            model.image, model_dir="/repository", served_model_name=spec.name,
            resources=replace(resources, gpu_device_ids=placeholder_gpus), env=model.env, secrets=model.secrets,
            command=model.command, args=model.args, default_images=self._default_images,
        )

    async def launch(self, desired: Desired, replica_id: str, report: Callable[[str], None]) -> ReplicaInfo:
        spec = desired.spec
        compute, model = spec.compute, spec.model
        resources = self.resources(compute.accelerator, compute.instance_type, compute.instance_size)
        if resources.gpu_count:
            try:
                ids = self._allocator.assign(replica_id, resources.gpu_count, compute.instance_type)
            except NoCapacity as error:
                raise WaitingForCapacity(f"waiting for capacity: {error}") from None
            resources = replace(resources, gpu_device_ids=ids)

        report(f"fetching model artifacts of {model.repository}")
        model_dir = await artifacts.fetch(model.repository, model.revision, self._cache_dir)
        container = presets.build_container_spec(
            model.image,
            model_dir=str(model_dir),
            served_model_name=spec.name,
            resources=resources,
            env=model.env,
            secrets=model.secrets,
            command=model.command,
            args=model.args,
            default_images=self._default_images,
        )
        report(f"pulling image {container.image}")
        await self._runtime.ensure_image(container.image, container.registry_auth, report)
        report(f"starting replica {replica_id}")
        info = await self._runtime.start(desired.key, replica_id, str(desired.revision), container)
        report(f"waiting for replica {replica_id} to answer {container.health_route}")
        return await readiness.wait_ready(
            self._runtime, info, session=self._session, deadline_s=self._ready_deadline_s
        )

    def free_slots(self, desired: Desired) -> int | None:
        """How many more replicas of this endpoint its free GPUs can hold; None for CPU ones."""
        compute = desired.spec.compute
        resources = self.resources(compute.accelerator, compute.instance_type, compute.instance_size)
        if not resources.gpu_count:
            return None
        held = self._allocator.holders
        free = sum(1 for gpu in self._inventory if gpu.type == compute.instance_type and gpu.uuid not in held)
        return free // resources.gpu_count

    async def utilization(self, desired: Desired, replica_ids: list[str]) -> float | None:
        """Average utilization of the replicas, in percent: GPU (NVML) on GPU instances, else CPU
        (Docker stats) relative to each replica's CPU limit."""
        compute = desired.spec.compute
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
        try:
            async with self._session.get(
                f"http://{replica.address}{replica.health_route}", timeout=aiohttp.ClientTimeout(total=HEALTH_CHECK_S)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def release(self, replica_id: str) -> None:
        self._allocator.release(replica_id)
