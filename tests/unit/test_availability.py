"""Whether this host can run an image, over a fake image inventory: present images run; absent
ones run when their registry has them; a registry's answer is kept for its TTL (injected time),
presence is asked every time; Docker failing means unknown, never "cannot run"."""

from __future__ import annotations

import pytest

from engines.availability import ImageInventory
from engines.runtime import RuntimeFailure


class Inventory:
    def __init__(self, present=(), registry=()):
        self.present, self.registry = set(present), set(registry)
        self.asked_present: list[str] = []
        self.asked_registry: list[str] = []
        self.now = 0.0

    async def is_present(self, image):
        self.asked_present.append(image)
        if image == "broken":
            raise RuntimeFailure("inspect image", image, "cannot reach the Docker engine")
        return image in self.present

    async def in_registry(self, image):
        self.asked_registry.append(image)
        return None if image in self.registry else "no such host"

    def make(self, ttl_s=60.0):
        return ImageInventory(self.is_present, self.in_registry, ttl_s=ttl_s, clock=lambda: self.now)


async def test_present_or_pullable_runs_and_neither_is_said_in_a_sentence():
    inv = Inventory(present={"here:1"}, registry={"pullable:1"})
    images = inv.make()
    assert (await images.check("here:1")).runnable and (await images.check("here:1")).present
    pullable = await images.check("pullable:1")
    assert pullable.runnable and pullable.present is False
    missing = await images.check("ghcr.io/x/y:1")
    assert not missing.runnable
    assert missing.missing == "the image ghcr.io/x/y:1 is not on this host and cannot be pulled (no such host)"
    assert inv.asked_registry == ["pullable:1", "ghcr.io/x/y:1"]  # a present image needs no registry


async def test_the_registry_answer_is_kept_for_its_ttl_and_presence_is_asked_each_time():
    inv = Inventory()
    images = inv.make(ttl_s=60.0)
    for _ in range(3):
        assert not (await images.check("t:1")).runnable
    assert inv.asked_registry == ["t:1"] and inv.asked_present == ["t:1"] * 3
    inv.registry.add("t:1")
    inv.now = 59.0
    assert not (await images.check("t:1")).runnable  # still the kept answer
    inv.now = 60.0
    assert (await images.check("t:1")).runnable  # asked again
    assert inv.asked_registry == ["t:1", "t:1"]
    inv.present.add("t:1")
    assert (await images.check("t:1")).present  # a build or a pull shows at once


@pytest.mark.parametrize("registry", [True, False])
async def test_docker_failing_is_unknown_never_a_refusal(registry):
    inv = Inventory()
    images = inv.make() if registry else ImageInventory(inv.is_present, None)
    verdict = await images.check("broken")
    assert verdict.runnable and verdict.present is None
    if not registry:
        assert (await images.check("absent:1")).runnable  # nothing to ask: a start will try the pull
