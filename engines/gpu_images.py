"""Which image a GPU replica runs, from what this host's GPUs are: TEI's image is built for one
GPU generation (compute capability) per tag, and the toolkit and llama.cpp run on the GPU only from
their CUDA builds (`endpointd images build --cuda`, or automatically on a host where NVML sees a
GPU). The CPU images stay the defaults of CPU replicas; the operator's pins always win.

Pure: it reads the inventory and a `present(image)` check it is given, so tests use fakes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from .gpus import Gpu
from .presets import LOCAL_IMAGES

log = logging.getLogger(__name__)

TEI_REPOSITORY = "ghcr.io/huggingface/text-embeddings-inference"
TEI_VERSION = "1.8"
# TEI's README, "Docker images": one tag per architecture it compiles its kernels for.
TEI_TAGS: Mapping[tuple[int, int], str] = {
    (7, 5): f"turing-{TEI_VERSION}",  # T4, RTX 2000 series (experimental upstream)
    (8, 0): TEI_VERSION,  # A100, A30
    (8, 6): f"86-{TEI_VERSION}",  # A10, A40, RTX 3000 series
    (8, 9): f"89-{TEI_VERSION}",  # L4, L40, RTX 4000 series
    (9, 0): f"hopper-{TEI_VERSION}",  # H100, H200 (experimental upstream)
}


def tei_image(gpus: Sequence[Gpu]) -> tuple[str | None, str]:
    """TEI's image for this host's GPUs, or None, and why (for the log)."""
    capabilities = {gpu.compute_capability for gpu in gpus}
    if not gpus:
        return None, "no GPU"
    known = {c for c in capabilities if c is not None}
    if len(known) < len(capabilities):
        return None, "NVML does not report every GPU's compute capability"
    if len(known) > 1:
        found = ", ".join(f"{a}.{b}" for a, b in sorted(known))
        return None, f"the GPUs have different compute capabilities ({found}): pin [engines] tei-gpu for the one TEI runs on"
    [capability] = known
    tag = TEI_TAGS.get(capability)
    if tag is None:
        return None, f"TEI {TEI_VERSION} publishes no image for compute capability {capability[0]}.{capability[1]}"
    return f"{TEI_REPOSITORY}:{tag}", f"compute capability {capability[0]}.{capability[1]}"


async def gpu_images(
    gpus: Sequence[Gpu], pinned: Mapping[str, str], present: Callable[[str], Awaitable[bool]],
) -> dict[str, str]:
    """Images for the "-gpu" keys that the operator did not pin: TEI's by compute capability, and
    the CUDA builds of the toolkit and llama.cpp when they are on this host."""
    chosen: dict[str, str] = {}
    if not gpus:
        return chosen
    if "tei-gpu" not in pinned:
        image, why = tei_image(gpus)
        if image is not None:
            chosen["tei-gpu"] = image
            log.info("GPU TEI replicas run %s (%s)", image, why)
        else:
            log.warning("GPU TEI replicas run the default tag: %s", why)
    for key in ("huggingface-gpu", "llamacpp-gpu"):
        image = LOCAL_IMAGES[key]
        if key in pinned:
            continue
        if await present(image):
            chosen[key] = image
        else:
            log.warning("%s is not built on this host: GPU replicas of the %s preset run %s; build it with "
                        "`endpointd images build --cuda`", image, key.removesuffix("-gpu"), "the default image")
    return chosen
