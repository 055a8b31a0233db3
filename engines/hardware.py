"""Hardware: an endpoint's accelerator/instanceType/instanceSize -> the resources of one replica, and this host's offer.

Both functions are pure: the host's CPU count, memory and GPU inventory are passed in
(`host_cpu_count()` and `host_memory_bytes()` read them; `gpus.read_inventory()` the GPUs).

Errors:
    HardwareError     the requested hardware does not exist on this host; the message names what does
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from engines.errors import EndpointdError
from engines.gpus import Gpu

CPU = "cpu"
GPU = "gpu"
ACCELERATORS = (CPU, GPU)

# The reference service gives a CPU instance 2 GB of memory per vCPU (intel-spr x1 = 1 vCPU/2 GB,
# x2 = 2/4 GB, x4 = 4/8 GB, ...: Inference Endpoints pricing page). Taken as GiB, as cloud
# instance tables mean it.
MEMORY_PER_CPU_BYTES = 2 * 1024**3

# Memory limits are whole MiB: a cgroup limit is kept in pages anyway, and a round figure reads well.
MIB = 1024**2

# Sizes are powers of two, as in the reference tables (x1, x2, x4, x8, x16, ...); GPU instances
# stop at x8, the most GPUs one reference instance has.
GPU_SIZES = (1, 2, 4, 8)

# Any CPU instanceType is accepted (this host has one kind of CPU); the offer lists it under the
# name huggingface_hub's documentation and examples use for CPU endpoints.
DEFAULT_CPU_INSTANCE_TYPE = "intel-icl"

_SIZE = re.compile(r"x([1-9][0-9]*)")


class HardwareError(EndpointdError, ValueError):
    """The requested hardware is not available on this host; the message names the valid values."""

    status = 400


@dataclass(frozen=True)
class Resources:
    """What one replica gets: CPU instances a CPU and a memory limit; GPU instances their GPUs and a
    memory limit (`gpu_memory_share`), no CPU limit (the GPUs are what is scarce, and a CPU cap
    would starve tokenization and the engine's scheduler)."""

    cpus: float | None
    memory_bytes: int | None
    gpu_count: int
    gpu_device_ids: tuple[str, ...] = ()  # filled in by GpuAllocator.assign when the replica is placed


@dataclass(frozen=True)
class ComputeOffer:
    """One deployable (accelerator, instanceType, instanceSize) of this host, for `GET /v2/provider/{ns}`."""

    accelerator: str
    instance_type: str
    instance_size: str
    architecture: str  # "Intel/AMD CPU" or the GPU's NVML name, e.g. "NVIDIA L4"
    num_accelerators: int  # CPUs for a CPU instance, GPUs for a GPU instance
    num_cpus: int
    memory_gb: int
    gpu_memory_gb: int | None
    max_accelerators: int  # the host's total of this accelerator (CPUs: times cpu_overcommit)
    used_accelerators: int  # GPUs held by replicas; CPUs held by the replicas' CPU limits
    status: str  # "available" when a replica of this size can be placed now, else "not_available"


def host_cpu_count() -> int:
    """CPUs this process may run on (respects taskset/cpusets, unlike os.cpu_count())."""
    return len(os.sched_getaffinity(0))


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gpu_memory_share(memory_bytes: int, gpu_total: int, gpu_count: int) -> int:
    """A GPU replica's memory limit: the host's memory in the share of the host's GPUs it holds
    (of any type), rounded down to a MiB. As cloud GPU instances do (an instance with a quarter of
    a server's GPUs has about a quarter of its memory), and so that the replicas that fill every
    GPU of the host fill its memory at most once: one engine loading weights through host memory
    can never take another's."""
    return memory_bytes * gpu_count // gpu_total // MIB * MIB


def _power_of_two(n: int) -> bool:
    return n & (n - 1) == 0


def _sizes_up_to(limit: int) -> list[int]:
    sizes, n = [], 1
    while n <= limit:
        sizes.append(n)
        n *= 2
    return sizes


def _names(sizes: Sequence[int]) -> str:
    return ", ".join(f"x{n}" for n in sizes) or "none"


def _cpu_sizes(cpu_count: int, memory_bytes: int) -> list[int]:
    return [n for n in _sizes_up_to(cpu_count) if n * MEMORY_PER_CPU_BYTES <= memory_bytes]


def resolve(
    accelerator: str,
    instance_type: str,
    instance_size: str,
    *,
    cpu_count: int,
    memory_bytes: int,
    inventory: Sequence[Gpu],
) -> Resources:
    """The resources of one replica of that instance on this host, or HardwareError saying what exists."""
    if accelerator not in ACCELERATORS:
        raise HardwareError(f"compute.accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}")
    match = _SIZE.fullmatch(instance_size)
    if accelerator == CPU:
        valid = _cpu_sizes(cpu_count, memory_bytes)
        if match is None or not _power_of_two(int(match[1])):
            raise HardwareError(f"compute.instanceSize {instance_size!r} is not one of {_names(valid)}")
        n = int(match[1])
        if n not in valid:
            raise HardwareError(
                f"compute.instanceSize {instance_size!r} needs {n} CPUs and {n * MEMORY_PER_CPU_BYTES // 1024**3} GiB;"
                f" this host has {cpu_count} CPUs and {memory_bytes / 1024**3:.1f} GiB (valid: {_names(valid)})"
            )
        return Resources(cpus=float(n), memory_bytes=n * MEMORY_PER_CPU_BYTES, gpu_count=0)

    counts = _gpu_counts(inventory)
    if instance_type not in counts:
        have = ", ".join(f"{t} ({c})" for t, c in sorted(counts.items())) or "no GPU"
        raise HardwareError(f"compute.instanceType {instance_type!r} is not a GPU of this host; it has: {have}")
    if match is None or int(match[1]) not in GPU_SIZES:
        raise HardwareError(f"compute.instanceSize {instance_size!r} is not one of {_names(GPU_SIZES)}")
    n = int(match[1])
    if n > counts[instance_type]:
        valid = [size for size in GPU_SIZES if size <= counts[instance_type]]
        raise HardwareError(
            f"compute.instanceSize {instance_size!r} needs {n} {instance_type}; this host has "
            f"{counts[instance_type]} (valid: {_names(valid)})"
        )
    return Resources(cpus=None, memory_bytes=gpu_memory_share(memory_bytes, len(inventory), n), gpu_count=n)


def _gpu_counts(inventory: Sequence[Gpu]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for gpu in inventory:
        counts[gpu.type] = counts.get(gpu.type, 0) + 1
    return counts


def describe_offer(
    cpu_count: int,
    memory_bytes: int,
    inventory: Sequence[Gpu],
    allocated: Collection[str],
    cpu_instance_type: str = DEFAULT_CPU_INSTANCE_TYPE,
    *,
    cpus_max: int | None = None,
    cpus_used: int = 0,
    cpu_fits: Callable[[int], bool] | None = None,
) -> list[ComputeOffer]:
    """Every instance this host can run: CPU sizes that fit its cores and memory, GPU sizes per type.

    `allocated` holds the device ids (GPU uuids) replicas hold now; a size is `available` when that
    many GPUs of its type are free. CPU sizes: `cpus_max` CPUs may be held (default the host's),
    `cpus_used` are, and `cpu_fits(n)` says whether one more replica of n CPUs fits now (its CPUs
    and memory; default: always).
    """
    offers = [
        ComputeOffer(
            accelerator=CPU, instance_type=cpu_instance_type, instance_size=f"x{n}",
            architecture="Intel/AMD CPU", num_accelerators=n, num_cpus=n,
            memory_gb=n * MEMORY_PER_CPU_BYTES // 1024**3, gpu_memory_gb=None,
            max_accelerators=cpu_count if cpus_max is None else cpus_max, used_accelerators=cpus_used,
            status="available" if cpu_fits is None or cpu_fits(n) else "not_available",
        )
        for n in _cpu_sizes(cpu_count, memory_bytes)
    ]
    for gpu_type, total in sorted(_gpu_counts(inventory).items()):
        of_type = [gpu for gpu in inventory if gpu.type == gpu_type]
        used = sum(1 for gpu in of_type if gpu.uuid in allocated)
        for n in (size for size in GPU_SIZES if size <= total):
            offers.append(ComputeOffer(
                accelerator=GPU, instance_type=gpu_type, instance_size=f"x{n}",
                architecture=of_type[0].name, num_accelerators=n, num_cpus=cpu_count,
                memory_gb=gpu_memory_share(memory_bytes, len(inventory), n) // 1024**3,
                gpu_memory_gb=n * of_type[0].memory_total_bytes // 1024**3,
                max_accelerators=total, used_accelerators=used,
                status="available" if total - used >= n else "not_available",
            ))
    return offers
