"""Model artifacts: a local directory as is, or a Hub snapshot fetched once into the huggingface_hub cache.

A replica sees its model at `/repository`, read-only (`repository_mounts`). A Hub snapshot
directory holds relative symlinks into the repository's `blobs/` folder, so that folder is mounted
too, at `/blobs`, where those links resolve inside the container (see `repository_mounts`).

Errors:
    ArtifactError     the artifacts could not be had; the message names the repository and why
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from engines.runtime import Mount

REPOSITORY_TARGET = "/repository"  # where every engine finds its model (the reference service's path)

# A snapshot file is a link such as `../../blobs/<sha>` (from `snapshots/<commit>/`; one more `../`
# per sub-folder). Seen from `/repository/...` those `..` stop at `/`, so the link names
# `/blobs/<sha>`: mounting the blobs folder there makes every link resolve.
BLOBS_TARGET = "/blobs"

# Prefixes that mark `model.repository` as a host path rather than a Hub repository id
# ("org/name" never starts with one of them).
_LOCAL_PREFIXES = ("/", "./", "../", "~")

Downloader = Callable[..., str]

# (repository, revision, cache_dir, allow_patterns) -> the download running for it. Concurrent
# fetches of the same key await the same task, so a snapshot is downloaded once. A task removes
# itself when done; the entry is the reference that keeps it alive if every caller is cancelled
# (the download thread cannot be interrupted anyway, and the next caller finds it done in the cache).
_inflight: dict[tuple[str, str | None, str, tuple[str, ...] | None], asyncio.Task[Path]] = {}


class ArtifactError(Exception):
    """The model's files could not be had. The message names the repository and the cause."""


def is_local(repository: str) -> bool:
    return repository.startswith(_LOCAL_PREFIXES)


async def fetch(
    repository: str,
    revision: str | None,
    cache_dir: Path,
    allow_patterns: Sequence[str] | None = None,
    token: str | None = None,
    *,
    downloader: Downloader = snapshot_download,
) -> Path:
    """The host directory holding the model's files: a local directory, or the cached Hub snapshot."""
    if is_local(repository):
        path = Path(repository).expanduser().resolve()
        if not path.is_dir():
            raise ArtifactError(f"model repository {repository!r} is a local path, but {path} is not a directory")
        return path

    patterns = tuple(allow_patterns) if allow_patterns is not None else None
    key = (repository, revision, str(cache_dir), patterns)
    task = _inflight.get(key)
    if task is None:
        task = asyncio.create_task(
            _download(downloader, repository, revision, cache_dir, patterns, token),
            name=f"fetch {repository}@{revision or 'main'}",
        )
        _inflight[key] = task
        task.add_done_callback(lambda done: _forget(key, done))
    # shield: one caller giving up must not cancel the download the others wait for.
    return await asyncio.shield(task)


def _forget(key: tuple, task: asyncio.Task[Path]) -> None:
    if _inflight.get(key) is task:
        del _inflight[key]
    if not task.cancelled():
        task.exception()  # retrieved here, so an error nobody awaited is not logged as "never retrieved"


async def _download(
    downloader: Downloader,
    repository: str,
    revision: str | None,
    cache_dir: Path,
    allow_patterns: tuple[str, ...] | None,
    token: str | None,
) -> Path:
    at = f"model repository {repository!r} (revision {revision or 'main'})"
    try:
        path = await asyncio.to_thread(
            downloader,
            repository,
            revision=revision,
            cache_dir=str(cache_dir),
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
            token=token,
        )
    except GatedRepoError as error:
        raise ArtifactError(f"{at} is gated: the token must be granted access to it on the Hub") from error
    except RepositoryNotFoundError as error:
        raise ArtifactError(f"{at} was not found on the Hub, or the token cannot read it") from error
    except RevisionNotFoundError as error:
        raise ArtifactError(f"{at}: that revision does not exist in the repository") from error
    except LocalEntryNotFoundError as error:
        raise ArtifactError(
            f"{at} is not (completely) in the cache at {cache_dir} and the Hub cannot be reached: {error}"
        ) from error
    except Exception as error:  # the boundary: whatever the downloader raises becomes our error
        raise ArtifactError(f"could not fetch {at}: {type(error).__name__}: {error}") from error
    return Path(path)


def repository_mounts(model_dir: str) -> tuple[Mount, ...]:
    """Read-only mounts that show `model_dir` at /repository (plus its blobs for a Hub snapshot)."""
    path = PurePosixPath(model_dir)
    mounts = [Mount(source=model_dir, target=REPOSITORY_TARGET)]
    snapshots = path.parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith("models--"):
        mounts.append(Mount(source=str(snapshots.parent / "blobs"), target=BLOBS_TARGET))
    return tuple(mounts)
