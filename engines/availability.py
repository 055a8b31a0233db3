"""Whether this host can run an image: the Docker engine has it, or its registry has it (so a
replica's start could pull it). The engine suggestion prefers what can run here, and a catalog
recipe whose image cannot is listed with the reason and refused with it.

Presence is asked every time (an inspect is cheap, and a build or a pull changes it); a
registry's answer is kept for `ttl_s`, since asking one that cannot be reached may take seconds.
Docker's own failures mean "unknown", which never blocks anything.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engines.runtime import RuntimeFailure

log = logging.getLogger("endpointd.images")

# A registry's "has it" or "cannot be reached" holds for this long.
REGISTRY_TTL_S = 300.0
# Images whose registry answer is kept: the engines' few defaults and the catalog's images.
MAX_CACHED = 256


@dataclass(frozen=True)
class Verdict:
    image: str
    present: bool | None  # on this host; None: Docker did not answer
    missing: str | None = None  # None: it can run here; else why not, a sentence

    @property
    def runnable(self) -> bool:
        return self.missing is None


class ImageInventory:
    """`present(image) -> bool` (the engine has it; may raise RuntimeFailure) and `in_registry(image)
    -> None | str` (None: the registry has it; else why it cannot be pulled)."""

    def __init__(self, present: Callable[[str], Awaitable[bool]],
                 in_registry: Callable[[str], Awaitable[str | None]] | None,
                 *, ttl_s: float = REGISTRY_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._present = present
        self._in_registry = in_registry
        self._ttl_s = ttl_s
        self._clock = clock
        self._registry: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    async def check(self, image: str) -> Verdict:
        try:
            present = await self._present(image)
        except RuntimeFailure as error:
            log.warning("could not tell whether image %s is on this host: %s", image, error)
            return Verdict(image, None)
        if present:
            return Verdict(image, True)
        why = await self._registry_answer(image)
        if why is None:
            return Verdict(image, False)
        return Verdict(image, False, f"the image {image} is not on this host and cannot be pulled ({why})")

    async def _registry_answer(self, image: str) -> str | None:
        if self._in_registry is None:
            return None  # nothing to ask: a start will try the pull
        now = self._clock()
        cached = self._registry.get(image)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        why = await self._in_registry(image)
        self._registry[image] = (now, why)
        self._registry.move_to_end(image)
        while len(self._registry) > MAX_CACHED:
            self._registry.popitem(last=False)
        return why
