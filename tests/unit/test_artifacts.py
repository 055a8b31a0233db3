"""Model artifacts, offline: local directories, a hand-made huggingface_hub cache, one download per key."""

from __future__ import annotations

import asyncio
import os
import posixpath
import threading
from pathlib import Path

import huggingface_hub.constants
import pytest
from tqdm.auto import tqdm

from engines.artifacts import ArtifactError, fetch, repository_mounts
from engines.runtime import Mount

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE into its constants at import; its HTTP layer checks the constant.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_cache(tmp_path) -> Path:
    """The layout snapshot_download leaves: blobs, a snapshot of relative links, and refs/main."""
    cache = tmp_path / "hub"
    storage = cache / "models--org--name"
    (storage / "blobs").mkdir(parents=True)
    (storage / "blobs" / "aaa").write_text('{"model_type": "gpt2"}')
    (storage / "blobs" / "bbb").write_bytes(b"\0" * 16)
    snapshot = storage / "snapshots" / COMMIT
    (snapshot / "sub").mkdir(parents=True)
    os.symlink("../../blobs/aaa", snapshot / "config.json")
    os.symlink("../../../blobs/bbb", snapshot / "sub" / "weights.bin")
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    return cache


async def test_local_directory_is_used_as_is(tmp_path):
    (tmp_path / "model").mkdir()
    assert await fetch(str(tmp_path / "model"), None, tmp_path / "cache") == (tmp_path / "model").resolve()


@pytest.mark.parametrize("spelling", ["./model", "../here/model", "~/model"])
async def test_relative_and_home_paths_are_resolved(spelling, tmp_path, monkeypatch):
    (tmp_path / "here" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here")
    monkeypatch.setenv("HOME", str(tmp_path / "here"))
    assert await fetch(spelling, None, tmp_path / "cache") == (tmp_path / "here" / "model").resolve()


async def test_missing_local_directory_is_an_error(tmp_path):
    with pytest.raises(ArtifactError, match=r"'/nowhere/model' is a local path, but .* is not a directory"):
        await fetch("/nowhere/model", None, tmp_path)


@pytest.mark.parametrize("revision", [None, "main", COMMIT])
async def test_snapshot_download_finds_the_cached_snapshot(revision, hub_cache, offline):
    path = await fetch("org/name", revision, hub_cache, allow_patterns=["*.json", "*.bin"])
    assert path == hub_cache / "models--org--name" / "snapshots" / COMMIT
    assert (path / "config.json").read_text() == '{"model_type": "gpt2"}'


async def test_snapshot_links_resolve_inside_the_container(hub_cache, offline):
    path = await fetch("org/name", None, hub_cache)
    mounts = repository_mounts(str(path))
    assert mounts == (Mount(str(path), "/repository"), Mount(str(path.parent.parent / "blobs"), "/blobs"))
    # Follow each link as the container would: from its place under /repository.
    for inside, link in [("/repository", path / "config.json"), ("/repository/sub", path / "sub" / "weights.bin")]:
        target = posixpath.normpath(posixpath.join(inside, os.readlink(link)))
        blob = Path(mounts[1].source) / posixpath.relpath(target, "/blobs")
        assert blob.read_bytes() == link.read_bytes()


async def test_uncached_repository_offline_names_it(hub_cache, offline):
    with pytest.raises(ArtifactError, match=r"model repository 'org/other' \(revision main\) is not \(completely\) "
                                            r"in the cache at .* and the Hub cannot be reached"):
        await fetch("org/other", None, hub_cache)


def test_plain_directory_mounts_only_itself():
    assert repository_mounts("/srv/models/gpt2") == (Mount("/srv/models/gpt2", "/repository"),)


class BlockingDownloader:
    """Counts calls; each call waits until released, as a long download would."""

    def __init__(self, result: str, error: Exception | None = None):
        self.calls: list[tuple] = []
        self.release = threading.Event()
        self.result, self.error = result, error

    def __call__(self, repo_id, **kwargs):
        self.calls.append((repo_id, kwargs))
        self.release.wait(5)
        if self.error:
            raise self.error
        return self.result


async def test_concurrent_fetches_share_one_download(tmp_path):
    downloader = BlockingDownloader("/cache/models--org--name/snapshots/abc")
    fetches = [asyncio.create_task(fetch("org/name", "abc", tmp_path, ["*.gguf"], "hf_tok", downloader=downloader))
               for _ in range(3)]
    await asyncio.sleep(0.05)
    downloader.release.set()
    assert await asyncio.gather(*fetches) == [Path("/cache/models--org--name/snapshots/abc")] * 3
    [(repo_id, kwargs)] = downloader.calls
    assert issubclass(kwargs.pop("tqdm_class"), tqdm)  # the download's progress, in bytes
    assert (repo_id, kwargs) == ("org/name", {"revision": "abc", "cache_dir": str(tmp_path),
                                              "allow_patterns": ["*.gguf"], "token": "hf_tok"})


async def test_a_cancelled_caller_does_not_cancel_the_others(tmp_path):
    downloader = BlockingDownloader("/snap")
    first = asyncio.create_task(fetch("org/name", None, tmp_path, downloader=downloader))
    second = asyncio.create_task(fetch("org/name", None, tmp_path, downloader=downloader))
    await asyncio.sleep(0.05)
    first.cancel()
    downloader.release.set()
    assert await second == Path("/snap")
    assert len(downloader.calls) == 1


async def test_different_revisions_download_separately(tmp_path):
    downloader = BlockingDownloader("/snap")
    downloader.release.set()
    await asyncio.gather(fetch("org/name", "v1", tmp_path, downloader=downloader),
                         fetch("org/name", "v2", tmp_path, downloader=downloader))
    assert sorted(kw["revision"] for _, kw in downloader.calls) == ["v1", "v2"]


async def test_downloader_errors_become_artifact_errors(tmp_path):
    downloader = BlockingDownloader("/snap", error=OSError("No space left on device"))
    downloader.release.set()
    with pytest.raises(ArtifactError, match=r"could not fetch model repository 'org/name' \(revision v1\): "
                                            r"OSError: No space left on device"):
        await fetch("org/name", "v1", tmp_path, downloader=downloader)
    # a failed download is not remembered: the next fetch tries again
    downloader.error = None
    assert await fetch("org/name", "v1", tmp_path, downloader=downloader) == Path("/snap")
    assert len(downloader.calls) == 2
