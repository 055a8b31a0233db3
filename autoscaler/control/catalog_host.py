"""Whether a catalog recipe deploys on this host as it is, and if not, why, in a sentence: the
catalog lists every recipe with that answer and a deploy of one that cannot is refused with it.

A recipe deploys here when, in this order:
  - this host has its hardware (a GPU recipe needs a GPU of its type; CPUs and memory for one replica);
  - its local repository is a directory under a model root;
  - its engine's image is on this host or its registry has it (engines/availability.py);
  - its Hub model (for an engine that reads one) can be pinned: the Hub answers, or the cache has it.

Whether a Hub model is cached is asked of the namespace's own cache (Hub downloads are kept per
namespace). Answers are kept `ttl_s` per recipe and namespace (a listing asks for every recipe it shows; the Hub and the
registries are slow to say they cannot be reached), so a change on the host shows within that.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoscaler.model import wire
from autoscaler.model.catalog import CatalogError, Recipe
from engines import artifacts, hardware, presets
from engines.availability import Verdict
from engines.model_roots import RootsError

TTL_S = 60.0
MAX_CACHED = 10_000  # catalog.MAX_RECIPES


class RecipeChecks:
    """`api`: the ManagementApi (its limits, launcher check, describe, images and pinned images)."""

    def __init__(self, api: Any, *, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._ttl_s = ttl_s
        self._clock = clock
        self._answers: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    async def why_not(self, recipe: Recipe, namespace: str) -> str | None:
        now = self._clock()
        key = f"{namespace}/{recipe.id}"
        cached = self._answers.get(key)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        answer = await self._check(recipe, namespace)
        self._answers[key] = (now, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > MAX_CACHED:
            self._answers.popitem(last=False)
        return answer

    async def all(self, recipes: Iterable[Recipe], namespace: str) -> dict[str, str | None]:
        return {recipe.id: await self.why_not(recipe, namespace) for recipe in recipes}

    async def _check(self, recipe: Recipe, namespace: str) -> str | None:
        api = self._api
        roots = api.limits.roots.roots
        try:
            spec = wire.parse_create(recipe.create_body("catalog-check", roots[0] if roots else None))
        except (CatalogError, wire.WireError) as error:
            return str(error)
        try:
            api.check(spec)
        except (hardware.HardwareError, presets.PresetError) as error:
            return str(error)
        one = replace(spec, compute=replace(spec.compute, scaling=replace(spec.compute.scaling, min_replica=1)))
        why = api.limits.never_fits(one)
        if why is not None:
            return f"one replica could never run here: {why}"
        repository, image = spec.model.repository, spec.model.image
        if artifacts.is_local(repository):
            try:
                await asyncio.to_thread(api.limits.roots.check, repository)
            except RootsError as error:
                if recipe.prepare is not None and not Path(repository).exists():
                    return f"its model is not on this host yet: run `{recipe.prepare}` first"
                return str(error)
        if api.images is not None:
            verdict: Verdict = await api.images.check(image_for(image, recipe.accelerator, api.default_images))
            if not verdict.runnable:
                if recipe.variant in presets.LOCAL_IMAGES:  # an engine endpointd builds itself
                    return f"{verdict.missing}; build it here with `endpointd images build {recipe.variant}`"
                return verdict.missing
        if not artifacts.is_local(repository) and presets.reads_model(image):
            try:
                await api.describe(repository, spec.model.revision, namespace)
            except artifacts.HubUnreachable as error:
                cause = error.__cause__ or error
                return (f"the model {repository} is not cached on this host and the Hub cannot be reached "
                        f"({type(cause).__name__}: {_short(cause, 120)})")
            except artifacts.ArtifactError as error:
                return _short(error)
        return None


def image_for(image: Mapping[str, Any], accelerator: str, default_images: Mapping[str, str] | None) -> str:
    """The container image the preset runs for `image` on an `accelerator` instance, with the
    operator's pinned images."""
    gpus = 1 if accelerator == hardware.GPU else 0
    resources = hardware.Resources(cpus=None, memory_bytes=None, gpu_count=gpus,
                                   gpu_device_ids=tuple(f"gpu-{i}" for i in range(gpus)))
    return presets.build_container_spec(image, model_dir=artifacts.REPOSITORY_TARGET, served_model_name="suggest",
                                        resources=resources, default_images=default_images).image


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit - 1] + "…"
