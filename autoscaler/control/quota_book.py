"""Each namespace's quota as the controller enforces it, and what each namespace's replicas hold.

A replica is held here from the moment its slot is made (or its parked container asks for its
resources back, or a running container is adopted after a restart) until its container is gone
or parked: exactly the span in which engines/capacity.py holds its GPUs, CPUs and memory, so
starting, ready, sleeping, draining and stopping replicas count, and parked ones do not. The
controller holds and releases in the same calls as the host's capacity.

The quotas are set by the management API after it stored them (and at start, from the store).
Like the host's capacity, this is only called from the event loop and never awaits.
"""

from __future__ import annotations

from autoscaler.model.quotas import Quota, Use, holding, per_replica, replicas_fitting
from engines.capacity import Need


class QuotaBook:
    def __init__(self) -> None:
        self._quotas: dict[str, Quota] = {}
        self._held: dict[str, tuple[str, Use]] = {}  # replica id -> (namespace, what it holds)

    def set(self, namespace: str, quota: Quota | None) -> None:
        """The namespace's quota from now on (None: it has none)."""
        if quota is None or quota.unlimited:
            self._quotas.pop(namespace, None)
        else:
            self._quotas[namespace] = quota

    def quota(self, namespace: str) -> Quota | None:
        return self._quotas.get(namespace)

    def use(self, namespace: str) -> Use:
        """What the namespace's replicas hold now (its endpoints are the store's to count)."""
        total = Use()
        for owner, use in self._held.values():
            if owner == namespace:
                total = total + use
        return total

    def free(self, namespace: str, need: Need, what: str = "a replica") -> tuple[int | None, str]:
        """How many more replicas needing `need` the namespace's quota lets start (None: it does
        not bound them), and the quota that bounds them most."""
        quota = self._quotas.get(namespace)
        if quota is None:
            return None, ""
        use, each = self.use(namespace), per_replica(need)
        return replicas_fitting(quota, use, each), holding(quota, use, each, namespace, what)

    def hold(self, replica_id: str, namespace: str, need: Need) -> None:
        self._held[replica_id] = (namespace, per_replica(need))

    def release(self, replica_id: str) -> None:
        self._held.pop(replica_id, None)
