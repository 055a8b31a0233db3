"""Replica choice: the one with the fewest pending requests, ties broken at random."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence

from .control import Replica


def pick(
    replicas: Sequence[Replica],
    pending: Mapping[str, int],
    exclude: Collection[str] = (),
    rand: random.Random | None = None,
) -> Replica | None:
    """Least-pending replica not in `exclude`; `pending` maps replica id -> requests in flight.

    Ties are broken uniformly (reservoir sampling) so equal replicas share load evenly.
    """
    best: Replica | None = None
    best_load = 0
    ties = 0
    uniform = (rand or random).random
    for replica in replicas:
        if replica.id in exclude:
            continue
        load = pending.get(replica.id, 0)
        if best is None or load < best_load:
            best, best_load, ties = replica, load, 1
        elif load == best_load:
            ties += 1
            if uniform() * ties < 1:
                best = replica
    return best
