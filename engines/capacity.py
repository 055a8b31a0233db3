"""Placement: what the host has, what each replica holds, whether one more fits.

GPUs are held exclusively (`GpuAllocator`); CPUs and memory are accounted as the limits of the
replicas that hold them, against the host's total times `cpu_overcommit` (1.0: the limits never
add up to more than the host has). A replica that does not fit now waits with a message saying
why; one whose endpoint could never fit is refused at the API (`never_fits`).

Like the allocator, this is only called from the event loop and never awaits: every call is
atomic with respect to the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .gpus import GpuAllocator, NoCapacity

GIB = 1024**3


@dataclass(frozen=True)
class Need:
    """What one replica holds while it exists."""

    gpus: int = 0
    gpu_type: str = ""
    cpus: float = 0.0
    memory_bytes: int = 0
    label: str = field(default="", compare=False)  # the instance size, e.g. "x1", for messages

    @property
    def empty(self) -> bool:
        return not (self.gpus or self.cpus or self.memory_bytes)


class HostCapacity:
    def __init__(self, gpus: GpuAllocator, cpu_count: int, memory_bytes: int, overcommit: float = 1.0) -> None:
        self.gpus = gpus
        self.cpus = cpu_count * overcommit
        self.memory_bytes = memory_bytes * overcommit
        self._overcommit = overcommit
        self._held: dict[str, Need] = {}

    def _used(self) -> tuple[float, int]:
        return sum(n.cpus for n in self._held.values()), sum(n.memory_bytes for n in self._held.values())

    def cpus_used(self) -> float:
        """CPUs the replicas' limits hold now (of `cpus`)."""
        return self._used()[0]

    def free(self, need: Need) -> tuple[int | None, str]:
        """How many more replicas of `need` fit now (None: nothing bounds it), and why not when none
        does: what is missing, what the replica needs, and how much of it is in use by how many."""
        if need.empty:
            return None, ""
        what = f"this endpoint's {need.label} instance" if need.label else "a replica"
        counts: list[tuple[int, str]] = []
        if need.gpus:
            counts.append((self.gpus.free(need.gpu_type) // need.gpus,
                           f"no free GPUs for {what} ({self.gpus.shortage(need.gpus, need.gpu_type)})"))
        cpus, memory = self._used()
        if need.cpus:
            holders = sum(1 for n in self._held.values() if n.cpus)
            counts.append((int((self.cpus - cpus) // need.cpus + 1e-9),
                           f"no free CPUs for {what} (it needs {_cpus(need.cpus)}; {cpus:g} of {self.cpus:g} in use "
                           f"by {_replicas(holders)})"))
        if need.memory_bytes:
            holders = sum(1 for n in self._held.values() if n.memory_bytes)
            counts.append((int((self.memory_bytes - memory) // need.memory_bytes),
                           f"not enough free memory for {what} (it needs {need.memory_bytes / GIB:.1f} GiB; "
                           f"{memory / GIB:.1f} of {self.memory_bytes / GIB:.1f} GiB in use by {_replicas(holders)})"))
        count, why = min(counts, key=lambda c: c[0])
        return max(count, 0), why

    def assign(self, replica_id: str, need: Need) -> tuple[str, ...]:
        """Hold `need` for the replica, with the GPU ids it gets; NoCapacity when it does not fit."""
        free, why = self.free(need)
        if free == 0:
            raise NoCapacity(why)
        ids = self.gpus.assign(replica_id, need.gpus, need.gpu_type) if need.gpus else ()
        self._held[replica_id] = need
        return ids

    def adopt(self, replica_id: str, need: Need, gpu_ids: Iterable[str]) -> None:
        """Record what a container found after a restart already holds (AdoptConflict for GPUs)."""
        self.gpus.adopt(replica_id, gpu_ids)
        self._held[replica_id] = need

    def release(self, replica_id: str) -> None:
        self.gpus.release(replica_id)
        self._held.pop(replica_id, None)

    def never_fits(self, need: Need, replicas: int) -> str | None:
        """Why `replicas` of `need` could not run together even on an idle host, or None."""
        if replicas <= 0 or need.empty:
            return None
        if need.cpus * replicas > self.cpus + 1e-9:
            return (f"{replicas} replicas of {need.cpus:g} CPUs need {need.cpus * replicas:g} CPUs; this host "
                    f"offers {self.cpus:g} (cpu_overcommit {self._overcommit:g})")
        if need.memory_bytes * replicas > self.memory_bytes:
            return (f"{replicas} replicas need {need.memory_bytes * replicas / GIB:.1f} GiB of memory; this host "
                    f"offers {self.memory_bytes / GIB:.1f} GiB (cpu_overcommit {self._overcommit:g})")
        return None


def _cpus(n: float) -> str:
    return f"{n:g} CPU" + ("" if n == 1 else "s")


def _replicas(n: int) -> str:
    return f"{n} replica" + ("" if n == 1 else "s")
