"""GPU replicas' images from the host's GPUs, through a fake NVML: TEI's tag by compute capability,
the CUDA builds of the toolkit and llama.cpp when they are built here; the operator's pins win.
Nothing CUDA can run on these machines: this is the selection only."""

from __future__ import annotations

import pytest

from engines.gpu_images import TEI_REPOSITORY, gpu_images, tei_image
from engines.gpus import read_inventory
from engines.hardware import Resources
from engines.presets import DEFAULT_IMAGES, LOCAL_IMAGES, PresetError, build_container_spec
from tests.unit.test_gpus import FakeNVML


class CapableNVML(FakeNVML):
    """The fake NVML, and each device's compute capability (the 5th item of its tuple)."""

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self.devices[handle][4]


def gpus(*capabilities):
    return read_inventory(CapableNVML([
        (f"NVIDIA GPU{i}", f"GPU-{i}", 24 << 30, 0, capability) for i, capability in enumerate(capabilities)
    ]))


@pytest.mark.parametrize("capabilities, tag", [
    ([(8, 0)], "1.8"),  # A100
    ([(8, 6), (8, 6)], "86-1.8"),  # A10s
    ([(8, 9)], "89-1.8"),  # L4
    ([(9, 0)], "hopper-1.8"),  # H100
    ([(7, 5)], "turing-1.8"),  # T4
])
def test_tei_runs_the_tag_built_for_the_hosts_gpus(capabilities, tag):
    assert tei_image(gpus(*capabilities))[0] == f"{TEI_REPOSITORY}:{tag}"


@pytest.mark.parametrize("capabilities, why", [
    ([(8, 0), (8, 9)], "different compute capabilities (8.0, 8.9)"),
    ([(6, 1)], "no image for compute capability 6.1"),
    ([], "no GPU"),
])
def test_tei_keeps_the_default_when_no_single_tag_fits(capabilities, why):
    image, reason = tei_image(gpus(*capabilities))
    assert image is None and why in reason


def test_an_nvml_without_compute_capability_keeps_the_default():
    inventory = read_inventory(FakeNVML([("NVIDIA L4", "GPU-l0", 24 << 30, 0)]))
    assert inventory[0].compute_capability is None
    assert tei_image(inventory)[0] is None


async def test_gpu_replicas_get_cuda_builds_when_present_and_pins_win():
    held = {LOCAL_IMAGES["llamacpp-gpu"]}

    async def present(image):
        return image in held

    chosen = await gpu_images(gpus((8, 9)), {}, present)
    assert chosen == {"tei-gpu": f"{TEI_REPOSITORY}:89-1.8", "llamacpp-gpu": LOCAL_IMAGES["llamacpp-gpu"]}
    pinned = {"tei-gpu": "mine/tei:1", "llamacpp-gpu": "mine/llama:1"}
    assert await gpu_images(gpus((8, 9)), pinned, present) == {}
    assert await gpu_images([], {}, present) == {}  # no GPU: nothing changes


def test_a_gpu_toolkit_replica_runs_the_gpu_key_and_a_cpu_one_the_cpu_key():
    def image(gpu_count, images):
        resources = Resources(cpus=2, memory_bytes=8 << 30, gpu_count=gpu_count,
                              gpu_device_ids=tuple(f"GPU-{i}" for i in range(gpu_count)))
        return build_container_spec({"huggingface": {}}, resources=resources, model_dir="/m", served_model_name="e1",
                                    default_images=images, task="feature-extraction").image

    cuda = {"huggingface-gpu": LOCAL_IMAGES["huggingface-gpu"]}
    assert image(1, cuda) == LOCAL_IMAGES["huggingface-gpu"]
    assert image(0, cuda) == DEFAULT_IMAGES["huggingface"]
    assert image(1, None) == DEFAULT_IMAGES["huggingface-gpu"]  # no CUDA build: the CPU toolkit, as before
    with pytest.raises(PresetError):
        image(1, {"no-such-key": "x"})
