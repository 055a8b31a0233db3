"""The host's NVIDIA GPUs: NVML inventory, exclusive assignment to replicas, utilization sampling.

`pynvml` (the `nvidia-ml-py` package) is imported lazily, only by `load_nvml()`: a host with no
package, no driver or no GPU has an empty inventory and one INFO line saying so. Every function
takes the NVML module as a parameter, so the tests pass a fake one.

Device ids are GPU **UUIDs** (`GPU-8f0c…`), not indexes: Docker's DeviceRequests accept either,
but a UUID names the same card after a reboot or a driver reload re-numbers the indexes, so the
ids recorded on a running container stay right when a restarted endpointd adopts it.

Errors:
    NoCapacity        not enough free GPUs of a type; the message says who holds them
    AdoptConflict     a container found after a restart claims a GPU that is unknown or already held
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from engines.errors import EndpointdError

log = logging.getLogger(__name__)

# Words in NVML product names that say how a card is packaged or how much memory it has, not
# which GPU it is: "NVIDIA A100-SXM4-80GB" and "NVIDIA A100-PCIE-40GB" are both `nvidia-a100`, the
# reference service's instanceType.
_PACKAGING = re.compile(r"^(\d+gb|sxm\d*|pcie|hbm\d*e?|nvl|tesla|geforce)$")


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str  # the device id used everywhere else in endpointd
    name: str  # as NVML reports it, e.g. "NVIDIA H100 80GB HBM3"
    type: str  # normalized instanceType, e.g. "nvidia-h100"
    memory_total_bytes: int
    compute_capability: tuple[int, int] | None = None  # (8, 0) for an A100; None when NVML cannot say


class NoCapacity(EndpointdError):
    """Not enough free GPUs of the requested type for a replica right now."""


class AdoptConflict(EndpointdError, ValueError):
    """A container found after a restart names a GPU that is unknown or held by another replica."""


def gpu_type(name: str) -> str:
    """NVML product name -> instanceType: "NVIDIA H100 80GB HBM3" -> "nvidia-h100"."""
    words = re.split(r"[\s\-_]+", name.strip().lower())
    kept = [w for w in words if w and w != "nvidia" and not _PACKAGING.match(w)]
    return "-".join(["nvidia", *kept])


def _text(value: str | bytes) -> str:
    # nvidia-ml-py >= 11.515 returns str; older releases (and pynvml forks) return bytes.
    return value.decode() if isinstance(value, bytes) else value


def _compute_capability(nvml: Any, handle: Any) -> tuple[int, int] | None:
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    except (nvml.NVMLError, AttributeError):  # an old driver or binding: the images fall back to the defaults
        return None
    return int(major), int(minor)


def load_nvml() -> ModuleType | None:
    """The real `pynvml` module, or None when the package is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def read_inventory(nvml: Any | None = None) -> list[Gpu]:
    """The GPUs NVML sees, by index; [] with one INFO line when there is no package, driver or GPU."""
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        log.info("no NVIDIA GPU found (the nvidia-ml-py package is not installed); GPU instances are unavailable")
        return []
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        log.info("no NVIDIA GPU found (NVML: %s); GPU instances are unavailable", error)
        return []
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(nvml.nvmlDeviceGetName(handle))
            gpus.append(Gpu(
                index=index,
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=name,
                type=gpu_type(name),
                memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                compute_capability=_compute_capability(nvml, handle),
            ))
    except nvml.NVMLError as error:
        log.info("no NVIDIA GPU found (NVML: %s); GPU instances are unavailable", error)
        return []
    finally:
        nvml.nvmlShutdown()
    if not gpus:
        log.info("no NVIDIA GPU found (NVML sees 0 devices); GPU instances are unavailable")
    return gpus


class GpuAllocator:
    """Which replica holds which GPU. A GPU is never held by two replicas.

    Only called from the event loop and never awaits, so each call is atomic with respect to the
    others: two replicas placed at the same time cannot both take the same free GPU.
    """

    def __init__(self, inventory: Sequence[Gpu]) -> None:
        self._gpus = {gpu.uuid: gpu for gpu in sorted(inventory, key=lambda g: g.index)}
        self._holder: dict[str, str] = {}  # gpu uuid -> replica id

    @property
    def holders(self) -> Mapping[str, str]:
        """GPU uuid -> the replica holding it (a copy)."""
        return dict(self._holder)

    def held_by(self, replica_id: str) -> tuple[str, ...]:
        return tuple(uuid for uuid in self._gpus if self._holder.get(uuid) == replica_id)

    def free(self, gpu_type: str) -> int:
        """How many GPUs of `gpu_type` no replica holds."""
        return sum(1 for uuid, gpu in self._gpus.items() if gpu.type == gpu_type and uuid not in self._holder)

    def shortage(self, count: int, gpu_type: str) -> str:
        """Why `count` GPUs of `gpu_type` cannot be had now (who holds them), for status messages."""
        of_type = [uuid for uuid, gpu in self._gpus.items() if gpu.type == gpu_type]
        return self._shortage(count, gpu_type, of_type, [uuid for uuid in of_type if uuid not in self._holder])

    def assign(self, replica_id: str, count: int, gpu_type: str) -> tuple[str, ...]:
        """Give `count` free GPUs of `gpu_type` to the replica (lowest indexes first) or raise NoCapacity."""
        if count < 1:
            raise ValueError(f"a GPU assignment needs count >= 1, got {count}")
        if self.held_by(replica_id):
            raise ValueError(f"replica {replica_id} already holds GPUs {self.held_by(replica_id)}; release them first")
        of_type = [uuid for uuid, gpu in self._gpus.items() if gpu.type == gpu_type]
        free = [uuid for uuid in of_type if uuid not in self._holder]
        if len(free) < count:
            raise NoCapacity(self._shortage(count, gpu_type, of_type, free))
        chosen = tuple(free[:count])
        for uuid in chosen:
            self._holder[uuid] = replica_id
        return chosen

    def release(self, replica_id: str) -> None:
        for uuid in self.held_by(replica_id):
            del self._holder[uuid]

    def adopt(self, replica_id: str, ids: Iterable[str]) -> None:
        """Record GPUs a running container already uses (found after a restart)."""
        ids = tuple(ids)
        for uuid in ids:
            if uuid not in self._gpus:
                raise AdoptConflict(
                    f"replica {replica_id} uses GPU {uuid}, which this host does not have "
                    f"(it has {', '.join(self._gpus) or 'no GPU'})"
                )
            holder = self._holder.get(uuid)
            if holder is not None and holder != replica_id:
                raise AdoptConflict(f"replica {replica_id} uses GPU {uuid}, already held by {holder}")
        for uuid in ids:
            self._holder[uuid] = replica_id

    def _shortage(self, count: int, gpu_type: str, of_type: list[str], free: list[str]) -> str:
        wanted = f"needs {count} {gpu_type}"
        if not of_type:
            types = sorted({gpu.type for gpu in self._gpus.values()})
            return f"{wanted}, this host has none (it has: {', '.join(types) or 'no GPU'})"
        holders = sorted({self._holder[uuid] for uuid in of_type if uuid in self._holder})
        return f"{wanted}, {len(free)} free of {len(of_type)}: held by {', '.join(holders)}"


class GpuSampler:
    """GPU utilization (percent of time a kernel ran over the driver's last sample period) and
    GPU memory in use (bytes of the card's memory allocated, by every process on it)."""

    def __init__(self, nvml: Any, inventory: Sequence[Gpu]) -> None:
        self._nvml = nvml
        self._index = {gpu.uuid: gpu.index for gpu in inventory}
        nvml.nvmlInit()  # NVML counts inits; close() balances this one

    def utilization(self, ids: Iterable[str]) -> dict[str, float]:
        """Device id -> GPU utilization percent, for the given ids (unknown ids raise KeyError)."""
        result = {}
        for uuid in ids:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(self._index[uuid])
            result[uuid] = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        return result

    def memory_used(self, ids: Iterable[str]) -> dict[str, int]:
        """Device id -> bytes of GPU memory in use, for the given ids (unknown ids raise KeyError)."""
        result = {}
        for uuid in ids:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(self._index[uuid])
            result[uuid] = int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used)
        return result

    def close(self) -> None:
        self._nvml.nvmlShutdown()
