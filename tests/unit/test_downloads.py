"""Hub downloads, by the real huggingface_hub client against a local imitation of the Hub
(tests/fake_hub.py): they land in a cache of their own per namespace, under no model root, so no
tenant can name another's download as a local repository; and they report their bytes as they go."""

from __future__ import annotations

import asyncio
import os
import time

import huggingface_hub.constants
import pytest

from engines.artifacts import fetch, repository_mounts
from engines.downloads import downloads_dir, hub_cache, move_old_downloads
from engines.model_roots import ModelRoots, RootsError
from engines.progress import download_message
from tests.fake_hub import COMMIT, FakeHub, Repo

MIB = 1 << 20
WEIGHTS = os.urandom(24 * MIB)  # over two of huggingface_hub's 10 MiB read chunks


@pytest.fixture
def hub(monkeypatch):
    with FakeHub({"org/private": Repo({"config.json": b"{}", "model.safetensors": WEIGHTS})}) as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        yield hub


async def until(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_downloads_land_outside_every_model_root_one_cache_per_namespace(hub, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    roots = ModelRoots.configure([], data)  # the default root, DATA_DIR/models, where downloads once landed
    downloads = downloads_dir(data)
    alice = await fetch("org/private", COMMIT, hub_cache(downloads, "alice"))
    assert alice == downloads / "alice" / "models--org--private" / "snapshots" / COMMIT
    assert (alice / "model.safetensors").read_bytes() == WEIGHTS
    assert not any(alice.resolve().is_relative_to(root) for root in roots.roots)
    # Another tenant naming it as a local repository is refused, the snapshot and the blobs alike.
    for path in (alice, alice.parent.parent / "blobs", downloads / "alice"):
        with pytest.raises(RootsError, match="is not under a model root"):
            roots.check(str(path))
    # Each namespace downloads into its own cache; an endpoint is given only its own snapshot.
    bob = await fetch("org/private", COMMIT, hub_cache(downloads, "bob"))
    assert bob == downloads / "bob" / "models--org--private" / "snapshots" / COMMIT
    assert hub.downloads.count("org/private/model.safetensors") == 2
    assert all(m.source.startswith(str(downloads / "bob") + "/") for m in repository_mounts(str(bob)))


@pytest.mark.parametrize("namespace", ["..", ".", "a/b", "ns with space", "~unowned", "x" * 200])
def test_a_namespace_is_always_one_folder_of_the_downloads(tmp_path, namespace):
    cache = hub_cache(tmp_path, namespace)
    assert cache.parent == tmp_path and cache.name not in (".", "..", "~unowned")


def test_a_model_root_inside_the_downloads_is_refused(tmp_path):
    data = tmp_path / "data"
    (downloads_dir(data) / "alice").mkdir(parents=True)
    for root in (downloads_dir(data), downloads_dir(data) / "alice"):
        with pytest.raises(RootsError, match="Hub downloads directory"):
            ModelRoots.configure([str(root)], data)


def test_downloads_an_older_endpointd_left_in_the_model_root_are_moved_out(tmp_path):
    data = tmp_path / "data"
    old = data / "models" / "models--org--private" / "snapshots" / COMMIT
    old.mkdir(parents=True)
    (data / "models" / "mine").mkdir()  # an operator's local repository stays
    roots = ModelRoots.configure([], data)
    assert move_old_downloads(data / "models", downloads_dir(data)) == ["models--org--private"]
    assert sorted(p.name for p in (data / "models").iterdir()) == ["mine"]
    assert (downloads_dir(data) / "~unowned" / "models--org--private" / "snapshots" / COMMIT).is_dir()
    with pytest.raises(RootsError):
        roots.check(str(old))


async def test_a_download_reports_its_bytes_as_it_goes(hub, tmp_path):
    held = hub.hold("org/private", "model.safetensors", after_bytes=12 * MIB)
    heard: list[tuple[int, int | None]] = []
    task = asyncio.create_task(fetch("org/private", COMMIT, tmp_path / "hub",
                                     progress=lambda done, total: heard.append((done, total))))
    try:
        # Part-way: some bytes done, fewer than the total, and the sentence says both.
        # (huggingface_hub reads 10 MiB at a time; the Hub sent 12 MiB, then waits)
        await until(lambda: any(10 * MIB <= done < (total or 0) for done, total in heard), "progress part-way")
        assert held.reached.is_set() and not task.done()
        done, total = next((d, t) for d, t in heard if 10 * MIB <= d < (t or 0))
        assert total == len(WEIGHTS) + 2
        assert download_message("org/private", done, total) == (
            f"fetching model artifacts of org/private: {done / MIB:.1f} MiB of 24.0 MiB ({100 * done // total} %)")
    finally:
        held.released.set()
    await task
    assert heard[-1] == (len(WEIGHTS) + 2, len(WEIGHTS) + 2)
    assert [d for d, _ in heard] == sorted(d for d, _ in heard)  # never backwards
    assert len(heard) <= 102  # once per whole percent at most, not once per chunk


async def test_every_caller_of_a_shared_download_hears_its_progress(hub, tmp_path):
    held = hub.hold("org/private", "model.safetensors", after_bytes=12 * MIB)
    first, second = [], []
    tasks = [asyncio.create_task(fetch("org/private", COMMIT, tmp_path / "hub", progress=lambda d, t, h=h: h.append(d)))
             for h in (first, second)]
    await until(lambda: first and second, "both callers to hear progress")
    held.released.set()
    assert len(set(await asyncio.gather(*tasks))) == 1
    assert first == second and first[-1] == len(WEIGHTS) + 2
    assert hub.downloads.count("org/private/model.safetensors") == 1
