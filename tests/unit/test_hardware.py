"""instanceType/instanceSize -> replica resources, and the host's offer, as pure functions of the host."""

from __future__ import annotations

import pytest

from engines.gpus import Gpu
from engines.hardware import (
    HardwareError,
    Resources,
    describe_offer,
    host_cpu_count,
    host_memory_bytes,
    resolve,
)

GIB = 1024**3
MIB = 1024**2
L4 = 24_152_899_584  # bytes NVML reports for an L4: 22 GiB
H100 = 85_520_809_984  # 79 GiB
INVENTORY = [
    Gpu(0, "GPU-l0", "NVIDIA L4", "nvidia-l4", L4),
    Gpu(1, "GPU-l1", "NVIDIA L4", "nvidia-l4", L4),
    Gpu(2, "GPU-h0", "NVIDIA H100 80GB HBM3", "nvidia-h100", H100),
]
HOST = {"cpu_count": 16, "memory_bytes": 64 * GIB, "inventory": INVENTORY}


@pytest.mark.parametrize("accelerator, instance_type, size, expected", [
    ("cpu", "intel-icl", "x1", Resources(1.0, 2 * GIB, 0)),  # 1 vCPU, 2 GB: the reference table
    ("cpu", "intel-spr", "x2", Resources(2.0, 4 * GIB, 0)),
    ("cpu", "intel-icl", "x4", Resources(4.0, 8 * GIB, 0)),
    ("cpu", "amd-genoa", "x8", Resources(8.0, 16 * GIB, 0)),  # any CPU instanceType: one kind of CPU here
    ("cpu", "intel-icl", "x16", Resources(16.0, 32 * GIB, 0)),
    # A GPU replica gets the host's memory in the share of the host's GPUs it holds (3 GPUs here,
    # whatever their type), rounded down to a MiB: 64 GiB / 3 = 21845.33 MiB.
    ("gpu", "nvidia-l4", "x1", Resources(None, 21845 * MIB, 1)),
    ("gpu", "nvidia-l4", "x2", Resources(None, 43690 * MIB, 2)),  # 2/3 of 64 GiB
    ("gpu", "nvidia-h100", "x1", Resources(None, 21845 * MIB, 1)),
])
def test_resolve(accelerator, instance_type, size, expected):
    assert resolve(accelerator, instance_type, size, **HOST) == expected


# (host memory, GPUs on the host, GPUs of the replica, its memory limit)
@pytest.mark.parametrize("memory, gpus, n, limit", [
    (64 * GIB, 1, 1, 64 * GIB),  # the only GPU: all of the host's memory
    (64 * GIB, 2, 1, 32 * GIB),
    (64 * GIB, 2, 2, 64 * GIB),
    (1024 * GIB, 8, 1, 128 * GIB),  # an 8-GPU server: 1/8 each
    (1024 * GIB, 8, 4, 512 * GIB),
    (100 * MIB + 1, 3, 1, 33 * MIB),  # 33.33 MiB, rounded down to a whole MiB
])
def test_a_gpu_replicas_memory_is_its_share_of_the_host(memory, gpus, n, limit):
    inventory = [Gpu(i, f"GPU-{i}", "NVIDIA L4", "nvidia-l4", L4) for i in range(gpus)]
    got = resolve("gpu", "nvidia-l4", f"x{n}", cpu_count=16, memory_bytes=memory, inventory=inventory)
    assert (got.cpus, got.memory_bytes, got.gpu_count) == (None, limit, n)


@pytest.mark.parametrize("accelerator, instance_type, size, host, message", [
    ("tpu", "v5e", "x1", HOST, "compute.accelerator 'tpu' is not one of cpu, gpu"),
    ("cpu", "intel-icl", "large", HOST, "'large' is not one of x1, x2, x4, x8, x16"),
    ("cpu", "intel-icl", "x3", HOST, "'x3' is not one of x1, x2, x4, x8, x16"),
    ("cpu", "intel-icl", "x32", HOST,  # 32 > 16 cores
     "'x32' needs 32 CPUs and 64 GiB; this host has 16 CPUs and 64.0 GiB (valid: x1, x2, x4, x8, x16)"),
    ("cpu", "intel-icl", "x8", {**HOST, "memory_bytes": 12 * GIB},  # 8 × 2 GiB = 16 > 12 GiB
     "'x8' needs 8 CPUs and 16 GiB; this host has 16 CPUs and 12.0 GiB (valid: x1, x2, x4)"),
    ("gpu", "nvidia-a100", "x1", HOST,
     "'nvidia-a100' is not a GPU of this host; it has: nvidia-h100 (1), nvidia-l4 (2)"),
    ("gpu", "nvidia-l4", "x4", HOST, "'x4' needs 4 nvidia-l4; this host has 2 (valid: x1, x2)"),
    ("gpu", "nvidia-l4", "x3", HOST, "'x3' is not one of x1, x2, x4, x8"),
    ("gpu", "nvidia-l4", "x1", {**HOST, "inventory": []}, "'nvidia-l4' is not a GPU of this host; it has: no GPU"),
])
def test_resolve_errors_name_valid_values(accelerator, instance_type, size, host, message):
    with pytest.raises(HardwareError) as caught:
        resolve(accelerator, instance_type, size, **host)
    assert message in str(caught.value)


def test_offer_lists_cpu_sizes_and_gpu_sizes_with_quota():
    offers = describe_offer(6, 64 * GIB, INVENTORY, allocated={"GPU-l1"})
    table = [(o.accelerator, o.instance_type, o.instance_size, o.num_accelerators, o.memory_gb, o.gpu_memory_gb,
              o.max_accelerators, o.used_accelerators, o.status) for o in offers]
    assert table == [
        # 6 cores: x1, x2, x4 (x8 needs 8); 2 GiB per CPU
        ("cpu", "intel-icl", "x1", 1, 2, None, 6, 0, "available"),
        ("cpu", "intel-icl", "x2", 2, 4, None, 6, 0, "available"),
        ("cpu", "intel-icl", "x4", 4, 8, None, 6, 0, "available"),
        # A GPU instance's memory: its share of the host's, 64 GiB × n / 3 GPUs (whole GiB shown)
        ("gpu", "nvidia-h100", "x1", 1, 21, 79, 1, 0, "available"),
        # 2 L4, one held: x1 fits (1 free), x2 does not; 22 GiB each
        ("gpu", "nvidia-l4", "x1", 1, 21, 22, 2, 1, "available"),
        ("gpu", "nvidia-l4", "x2", 2, 42, 44, 2, 1, "not_available"),
    ]
    assert offers[3].architecture == "NVIDIA H100 80GB HBM3"
    assert offers[3].num_cpus == 6


def test_offer_cpu_sizes_also_bounded_by_memory():
    sizes = [o.instance_size for o in describe_offer(16, 5 * GIB, [], allocated=())]
    assert sizes == ["x1", "x2"]  # x4 needs 8 GiB > 5


def test_host_readers_see_this_machine():
    assert host_cpu_count() >= 1
    assert host_memory_bytes() > 0


def test_offer_shows_the_cpus_in_use_and_which_cpu_sizes_fit_now():
    offers = describe_offer(4, 64 * GIB, [], allocated=(), cpus_max=4, cpus_used=3, cpu_fits=lambda n: n <= 1)
    assert [(o.instance_size, o.max_accelerators, o.used_accelerators, o.status) for o in offers] == [
        ("x1", 4, 3, "available"), ("x2", 4, 3, "not_available"), ("x4", 4, 3, "not_available"),
    ]
