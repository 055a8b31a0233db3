"""Placement of CPUs and memory beside GPUs: a table, and never_fits for the API."""

from __future__ import annotations

import pytest

from engines.capacity import GIB, HostCapacity, Need
from engines.gpus import Gpu, GpuAllocator, NoCapacity

X1 = Need(cpus=1, memory_bytes=4 * GIB)
GPU = Need(gpus=1, gpu_type="nvidia-l4", memory_bytes=8 * GIB)


def host(cpus=2, memory=16 * GIB, overcommit=1.0, gpus=1):
    inventory = [Gpu(i, f"GPU-{i}", "NVIDIA L4", "nvidia-l4", 24 * GIB) for i in range(gpus)]
    return HostCapacity(GpuAllocator(inventory), cpus, memory, overcommit)


def test_cpu_replicas_fit_up_to_the_host_then_wait_with_a_reason():
    h = host()
    assert h.free(X1) == (2, h.free(X1)[1])
    h.assign("a", X1)
    h.assign("b", X1)
    free, why = h.free(X1)
    assert free == 0 and why == "no free CPUs for a replica (it needs 1 CPU; 2 of 2 in use by 2 replicas)"
    with pytest.raises(NoCapacity, match="2 of 2 in use"):
        h.assign("c", X1)
    h.release("a")
    assert h.free(X1)[0] == 1


@pytest.mark.parametrize("overcommit, fits", [(1.0, 2), (1.5, 3), (4.0, 8)])
def test_overcommit_multiplies_what_may_be_held(overcommit, fits):
    h = host(memory=64 * GIB, overcommit=overcommit)
    assert h.free(X1)[0] == fits


def test_memory_and_gpus_bound_too():
    h = host(cpus=8, memory=10 * GIB)
    assert h.free(X1) == (2, "not enough free memory for a replica (it needs 4.0 GiB; 0.0 of 10.0 GiB in use by 0 replicas)")
    assert h.assign("g", GPU) == ("GPU-0",)
    assert h.free(GPU)[0] == 0  # the only GPU is held
    assert h.free(X1)[0] == 0  # and the GPU replica's memory limit counts


def test_the_reason_names_the_instance_what_it_needs_and_who_holds_the_rest():
    h = host(cpus=4)
    h.assign("a", Need(cpus=2))
    h.assign("b", Need(cpus=1))
    assert h.cpus_used() == 3
    assert h.free(Need(cpus=2, label="x2")) == (
        0, "no free CPUs for this endpoint's x2 instance (it needs 2 CPUs; 3 of 4 in use by 2 replicas)")
    h.assign("g", GPU)
    assert h.free(Need(gpus=1, gpu_type="nvidia-l4", label="x1")) == (
        0, "no free GPUs for this endpoint's x1 instance (needs 1 nvidia-l4, 0 free of 1: held by g)")


def test_an_unbounded_need_is_none():
    assert host().free(Need()) == (None, "")


@pytest.mark.parametrize("need, replicas, message", [
    (X1, 2, None),
    (X1, 3, "3 replicas of 1 CPUs need 3 CPUs; this host offers 2 (cpu_overcommit 1)"),
    (Need(cpus=1, memory_bytes=9 * GIB), 2, "2 replicas need 18.0 GiB of memory; this host offers 16.0 GiB (cpu_overcommit 1)"),
    (X1, 0, None),
])
def test_never_fits(need, replicas, message):
    assert host().never_fits(need, replicas) == message


def test_adopted_replicas_hold_what_they_held():
    h = host()
    h.adopt("a", X1, ())
    assert h.free(X1)[0] == 1
