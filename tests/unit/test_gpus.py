"""NVML inventory, GPU assignment and utilization, against a fake NVML (there is no GPU here)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import pytest

from engines.gpus import AdoptConflict, Gpu, GpuAllocator, GpuSampler, NoCapacity, gpu_type, read_inventory


class FakeNVMLError(Exception):
    """Stands for pynvml.NVMLError (whose str() is the driver's message)."""


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Utilization:
    gpu: int
    memory: int


class FakeNVML:
    """The pynvml functions endpointd uses, over a list of (name, uuid, memory, utilization)."""

    NVMLError = FakeNVMLError

    def __init__(self, devices, *, init_error=None, as_bytes=False):
        self.devices = devices
        self.init_error = init_error
        self.as_bytes = as_bytes  # nvidia-ml-py < 11.515 returned bytes
        self.inits = 0

    def nvmlInit(self):
        if self.init_error:
            raise FakeNVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def _text(self, value):
        return value.encode() if self.as_bytes else value

    def nvmlDeviceGetName(self, handle):
        return self._text(self.devices[handle][0])

    def nvmlDeviceGetUUID(self, handle):
        return self._text(self.devices[handle][1])

    def nvmlDeviceGetMemoryInfo(self, handle):
        total = self.devices[handle][2]
        return _Memory(total=total, free=total, used=0)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return _Utilization(gpu=self.devices[handle][3], memory=0)


H100 = "NVIDIA H100 80GB HBM3"
HOST = [  # two H100 and two L4, as NVML lists them
    (H100, "GPU-h0", 85_520_809_984, 10),
    ("NVIDIA L4", "GPU-l0", 24_152_899_584, 55),
    (H100, "GPU-h1", 85_520_809_984, 97),
    ("NVIDIA L4", "GPU-l1", 24_152_899_584, 0),
]


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", "nvidia-h100"),
    ("NVIDIA H100 PCIe", "nvidia-h100"),
    ("NVIDIA H100 NVL", "nvidia-h100"),
    ("NVIDIA H200", "nvidia-h200"),
    ("NVIDIA A100-SXM4-80GB", "nvidia-a100"),
    ("NVIDIA A100-PCIE-40GB", "nvidia-a100"),
    ("NVIDIA A10G", "nvidia-a10g"),
    ("NVIDIA L4", "nvidia-l4"),
    ("NVIDIA L40S", "nvidia-l40s"),
    ("Tesla T4", "nvidia-t4"),
    ("NVIDIA GeForce RTX 4090", "nvidia-rtx-4090"),
    ("NVIDIA RTX A6000", "nvidia-rtx-a6000"),
])
def test_gpu_type_matches_reference_instance_types(name, expected):
    assert gpu_type(name) == expected


@pytest.mark.parametrize("as_bytes", [False, True])
def test_inventory_reads_every_gpu(as_bytes):
    nvml = FakeNVML(HOST, as_bytes=as_bytes)
    gpus = read_inventory(nvml)
    assert gpus == [
        Gpu(0, "GPU-h0", H100, "nvidia-h100", 85_520_809_984),
        Gpu(1, "GPU-l0", "NVIDIA L4", "nvidia-l4", 24_152_899_584),
        Gpu(2, "GPU-h1", H100, "nvidia-h100", 85_520_809_984),
        Gpu(3, "GPU-l1", "NVIDIA L4", "nvidia-l4", 24_152_899_584),
    ]
    assert nvml.inits == 0  # every nvmlInit balanced by nvmlShutdown


@pytest.mark.parametrize("nvml, reason", [
    (FakeNVML([], init_error="Driver Not Loaded"), "NVML: Driver Not Loaded"),
    (FakeNVML([], init_error="NVML Shared Library Not Found"), "NVML: NVML Shared Library Not Found"),
    (FakeNVML([]), "NVML sees 0 devices"),
])
def test_no_gpu_is_one_info_line(nvml, reason, caplog):
    with caplog.at_level(logging.INFO, logger="engines.gpus"):
        assert read_inventory(nvml) == []
    assert [r.getMessage() for r in caplog.records] == [
        f"no NVIDIA GPU found ({reason}); GPU instances are unavailable"]


def test_no_pynvml_package_is_one_info_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with caplog.at_level(logging.INFO, logger="engines.gpus"):
        assert read_inventory() == []
    assert [r.getMessage() for r in caplog.records] == [
        "no NVIDIA GPU found (the nvidia-ml-py package is not installed); GPU instances are unavailable"]


@pytest.fixture
def allocator():
    return GpuAllocator(read_inventory(FakeNVML(HOST)))


def test_assign_takes_lowest_free_gpus_of_the_type(allocator):
    assert allocator.assign("ns/a-r1", 1, "nvidia-h100") == ("GPU-h0",)
    assert allocator.assign("ns/b-r1", 2, "nvidia-l4") == ("GPU-l0", "GPU-l1")
    assert allocator.assign("ns/c-r1", 1, "nvidia-h100") == ("GPU-h1",)
    assert allocator.holders == {"GPU-h0": "ns/a-r1", "GPU-l0": "ns/b-r1", "GPU-l1": "ns/b-r1", "GPU-h1": "ns/c-r1"}


def test_a_gpu_is_never_given_twice(allocator):
    allocator.assign("ns/a-r1", 1, "nvidia-h100")
    with pytest.raises(NoCapacity, match=r"needs 2 nvidia-h100, 1 free of 2: held by ns/a-r1"):
        allocator.assign("ns/b-r1", 2, "nvidia-h100")
    assert allocator.held_by("ns/b-r1") == ()  # a failed assignment takes nothing


def test_release_frees_for_the_next(allocator):
    allocator.assign("ns/a-r1", 2, "nvidia-h100")
    allocator.release("ns/a-r1")
    assert allocator.assign("ns/b-r1", 2, "nvidia-h100") == ("GPU-h0", "GPU-h1")


def test_missing_type_names_what_the_host_has(allocator):
    with pytest.raises(NoCapacity, match=r"needs 1 nvidia-a100, this host has none \(it has: nvidia-h100, nvidia-l4\)"):
        allocator.assign("ns/a-r1", 1, "nvidia-a100")


def test_assign_twice_to_one_replica_is_refused(allocator):
    allocator.assign("ns/a-r1", 1, "nvidia-l4")
    with pytest.raises(ValueError, match="already holds GPUs"):
        allocator.assign("ns/a-r1", 1, "nvidia-l4")


def test_adopt_after_restart_then_assign_skips_adopted(allocator):
    allocator.adopt("ns/a-r1", ["GPU-h0"])
    assert allocator.assign("ns/b-r1", 1, "nvidia-h100") == ("GPU-h1",)


@pytest.mark.parametrize("ids, message", [
    (["GPU-h0"], "uses GPU GPU-h0, already held by ns/a-r1"),
    (["GPU-gone"], "uses GPU GPU-gone, which this host does not have"),
])
def test_adopt_conflicts(allocator, ids, message):
    allocator.adopt("ns/a-r1", ["GPU-h0"])
    with pytest.raises(AdoptConflict, match=message):
        allocator.adopt("ns/b-r1", ids)
    assert allocator.held_by("ns/b-r1") == ()


def test_sampler_reads_utilization_by_uuid():
    nvml = FakeNVML(HOST)
    sampler = GpuSampler(nvml, read_inventory(nvml))
    assert sampler.utilization(["GPU-h1", "GPU-l0"]) == {"GPU-h1": 97.0, "GPU-l0": 55.0}
    sampler.close()
    assert nvml.inits == 0
