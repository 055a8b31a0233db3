"""Model artifacts: a local directory as is, or a Hub snapshot fetched once into the huggingface_hub cache.

Hub downloads land in the namespace's own cache (engines/downloads.py), never under a model root.

A replica sees its model at `/repository`, read-only (`repository_mounts`). A Hub snapshot
directory holds relative symlinks into the repository's `blobs/` folder, so that folder is mounted
too, at `/blobs`, where those links resolve inside the container (see `repository_mounts`).

It also says what a repository is at a revision (`describe`: the pinned commit, or a local
directory's content hash; its files and config) and what of it an engine needs (`download_pattern`).

Errors:
    ArtifactError     the artifacts could not be had; the message names the repository and why
      HubUnreachable  the Hub did not answer and the cache does not hold the repository
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm  # its subclass: snapshot_download names its bars only for those

from engines.errors import EndpointdError
from engines.progress import download_key
from engines.runtime import Mount

log = logging.getLogger("endpointd.artifacts")

REPOSITORY_TARGET = "/repository"  # where every engine finds its model (the reference service's path)

# A snapshot file is a link such as `../../blobs/<sha>` (from `snapshots/<commit>/`; one more `../`
# per sub-folder). Seen from `/repository/...` those `..` stop at `/`, so the link names
# `/blobs/<sha>`: mounting the blobs folder there makes every link resolve.
BLOBS_TARGET = "/blobs"

# Prefixes that mark `model.repository` as a host path rather than a Hub repository id
# ("org/name" never starts with one of them).
_LOCAL_PREFIXES = ("/", "./", "../", "~")

Downloader = Callable[..., str]
Progress = Callable[[int, "int | None"], None]  # (bytes done, bytes to fetch as far as known)

class _Download:
    """One download in flight, shared by every caller of its key; progress goes to each of them."""

    def __init__(self, run: Callable[[Progress], Coroutine[Any, Any, Path]], name: str) -> None:
        self.listeners: list[Progress] = []
        self.task = asyncio.create_task(run(self.tell), name=name)

    def tell(self, done: int, total: int | None) -> None:
        for listener in list(self.listeners):
            listener(done, total)


# (repository, revision, cache_dir, allow_patterns) -> the download running for it. Concurrent
# fetches of the same key await the same task, so a snapshot is downloaded once. A task removes
# itself when done; the entry is the reference that keeps it alive if every caller is cancelled
# (the download thread cannot be interrupted anyway, and the next caller finds it done in the cache).
_inflight: dict[tuple[str, str | None, str, tuple[str, ...] | None], _Download] = {}


class ArtifactError(EndpointdError):
    """The model's files could not be had. The message names the repository and the cause."""

    status = 400


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
    progress: Progress | None = None,
) -> Path:
    """The host directory holding the model's files: a local directory, or the cached Hub snapshot.
    `progress(done, total)` hears how many bytes of the download are done, on the event loop."""
    if is_local(repository):
        path = Path(repository).expanduser().resolve()
        if not path.is_dir():
            raise ArtifactError(f"model repository {repository!r} is a local path, but {path} is not a directory")
        return path

    patterns = tuple(allow_patterns) if allow_patterns is not None else None
    key = (repository, revision, str(cache_dir), patterns)
    download = _inflight.get(key)
    if download is None:
        download = _Download(
            lambda tell: _download(downloader, repository, revision, cache_dir, patterns, token, tell),
            name=f"fetch {repository}@{revision or 'main'}",
        )
        _inflight[key] = download
        download.task.add_done_callback(lambda done: _forget(key, done))
    if progress is not None:
        download.listeners.append(progress)
    try:
        # shield: one caller giving up must not cancel the download the others wait for.
        return await asyncio.shield(download.task)
    finally:
        if progress is not None:
            download.listeners.remove(progress)


def _forget(key: tuple, task: asyncio.Task[Path]) -> None:
    if (download := _inflight.get(key)) is not None and download.task is task:
        del _inflight[key]
    if not task.cancelled():
        task.exception()  # retrieved here, so an error nobody awaited is not logged as "never retrieved"


def progress_bar(tell: Progress, loop: asyncio.AbstractEventLoop) -> type[tqdm]:
    """A tqdm class for snapshot_download (its documented `tqdm_class`) that shows nothing and
    tells `tell` the bytes done and the total on `loop`. snapshot_download sums every file's bytes
    into its bar named "huggingface_hub.snapshot_download"; each file adds its size to that bar's
    total as it starts. Its other bars (files fetched, bytes transferred) are not followed. Told
    again only when the whole percent (or the total) changes: a status is not rewritten per chunk."""
    lock = threading.Lock()  # the download threads of several files update one bar
    told: list[tuple[int, int]] = []

    class Bar(tqdm):
        def __init__(self, *args: Any, name: str | None = None, **kwargs: Any) -> None:
            kwargs["disable"] = True  # nothing on the terminal
            super().__init__(*args, **kwargs)
            self._counts = name == "huggingface_hub.snapshot_download"
            self._done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            if self._counts and n:
                with lock:
                    self._done += int(n)
                self._tell()
            return None

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            if self._counts:
                self._tell()

        def _tell(self) -> None:
            done, total = self._done, int(self.total or 0) or None
            key = download_key(done, total)
            with lock:
                if (told and told[-1] == key) or (not done and not total):
                    return
                told[:] = [key]
            try:
                loop.call_soon_threadsafe(tell, done, total)
            except RuntimeError:  # the loop is closed (endpointd is stopping): nobody to tell
                pass

    return Bar


async def _download(
    downloader: Downloader,
    repository: str,
    revision: str | None,
    cache_dir: Path,
    allow_patterns: tuple[str, ...] | None,
    token: str | None,
    tell: Progress,
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
            tqdm_class=progress_bar(tell, asyncio.get_running_loop()),
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


# --- what a repository holds: its pinned revision, its files, its config ----------------------------
#
# `describe` answers once per create (and per suggestion) what the repository is at the revision asked:
#   - a Hub id: `model_info` (commit sha, files with sizes, config, library, tags, pipeline tag);
#     when the Hub cannot be reached, the huggingface_hub cache at `cache_dir` (refs/<revision> →
#     snapshot), so a host with a pre-populated cache works offline; else HubUnreachable;
#   - a local directory: a content hash instead of a commit (see `content_hash`), its files, its config.

# Time the Hub gets to answer one model_info call before the create is refused (502).
HUB_TIMEOUT_S = 20.0
# A repository with more files than this is refused rather than listed (the largest Hub model
# repositories have a few thousand files).
MAX_REPO_FILES = 100_000
# config.json is read only up to this size: real ones are a few KiB, a crafted one is not parsed whole.
MAX_CONFIG_BYTES = 1 << 20
COMMIT = re.compile(r"[0-9a-f]{40}")
LOCAL_REVISION_PREFIX = "sha256:"


class HubUnreachable(ArtifactError):
    """The Hub did not answer and the cache does not hold the repository: a 502, not the caller's fault."""

    status = 502


@dataclass(frozen=True)
class RepoFacts:
    """A repository at one revision, as far as choosing an engine and a download pattern needs it."""

    repository: str
    revision: str  # a commit sha (Hub), or "sha256:<hex>" (a local directory's content hash)
    files: Mapping[str, int | None]  # relative path -> size in bytes (None: the Hub did not say)
    config: Mapping[str, Any] = field(default_factory=dict)  # config.json, {} when absent or unreadable
    library: str | None = None  # the Hub's library_name ("transformers", "sentence-transformers", ...)
    tags: frozenset[str] = frozenset()
    pipeline_tag: str | None = None
    source: str = "hub"  # "hub", "cache" (the Hub was unreachable) or "local"


def content_hash(path: Path) -> str:
    """A local repository's revision: sha256 over every file's relative path, size and mtime (ns),
    sorted. Bounded: no file is read, so a 100 GB model hashes as fast as a small one; any write,
    rename, addition or removal changes it (a write that keeps size and mtime does not: `touch -d`)."""
    digest = hashlib.sha256()
    for relative, size, mtime_ns in sorted(_walk(path)):
        digest.update(f"{relative}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return LOCAL_REVISION_PREFIX + digest.hexdigest()


def _walk(root: Path) -> list[tuple[str, int, int]]:
    found = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            full = Path(directory, name)
            info = full.stat()
            found.append((full.relative_to(root).as_posix(), info.st_size, info.st_mtime_ns))
            if len(found) > MAX_REPO_FILES:
                raise ArtifactError(f"{root} holds more than {MAX_REPO_FILES} files; no model repository needs that")
    return found


def _config(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        value = json.loads(raw) if len(raw) <= MAX_CONFIG_BYTES else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _directory_facts(repository: str, path: Path, revision: str, source: str) -> RepoFacts:
    files = {relative: size for relative, size, _ in _walk(path)}
    return RepoFacts(repository, revision, files, _config(path / "config.json"), source=source)


def local_facts(repository: str) -> RepoFacts:
    path = Path(repository).expanduser().resolve()
    if not path.is_dir():
        raise ArtifactError(f"model repository {repository!r} is a local path, but {path} is not a directory")
    return _directory_facts(repository, path, content_hash(path), "local")


def cached_facts(repository: str, revision: str | None, cache_dir: Path) -> RepoFacts | None:
    """The repository as the huggingface_hub cache holds it (refs/<revision> names the snapshot), or None."""
    storage = cache_dir / ("models--" + repository.replace("/", "--"))
    wanted = revision or "main"
    commit = wanted if COMMIT.fullmatch(wanted) else None
    if commit is None:
        ref = storage / "refs" / wanted
        if ".." in Path(wanted).parts or not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snapshot = storage / "snapshots" / commit
    if not COMMIT.fullmatch(commit) or not snapshot.is_dir():
        return None
    return _directory_facts(repository, snapshot, commit, "cache")


def _hub_model_info(repository: str, revision: str | None, token: str | None) -> Any:
    return HfApi().model_info(repository, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT_S,
                              token=token)


def hub_facts(repository: str, revision: str | None, cache_dir: Path, token: str | None = None,
              *, model_info: Callable[..., Any] = _hub_model_info) -> RepoFacts:
    """The Hub's answer for the repository at `revision` (None: the latest commit of main); on a
    network failure, the cache's. Errors name the repository and say what to fix."""
    at = f"model repository {repository!r} (revision {revision or 'main'})"
    try:
        info = model_info(repository, revision, token)
    except GatedRepoError as error:
        raise ArtifactError(f"{at} is gated: the token must be granted access to it on the Hub") from error
    except RepositoryNotFoundError as error:
        raise ArtifactError(f"{at} was not found on the Hub, or the token cannot read it") from error
    except RevisionNotFoundError as error:
        raise ArtifactError(f"{at}: that revision does not exist in the repository") from error
    except HFValidationError as error:
        raise ArtifactError(f"model.repository {repository!r} is not a Hub repository id such as \"org/name\", "
                            f"nor a local path (starting with '/'): {error}") from error
    except Exception as error:  # offline, DNS, refused, timed out, 5xx: try the cache
        cached = cached_facts(repository, revision, cache_dir)
        if cached is not None:
            log.info("the Hub did not answer for %s (%s); using the cached snapshot %s", at, type(error).__name__,
                     cached.revision)
            return cached
        raise HubUnreachable(
            f"the Hub could not be reached to resolve {at} to a commit ({type(error).__name__}: {error}), and the "
            f"cache at {cache_dir} does not hold it; retry, or put the repository under a model root and use its path"
        ) from error
    siblings = list(getattr(info, "siblings", None) or ())
    if len(siblings) > MAX_REPO_FILES:
        raise ArtifactError(f"{at} lists more than {MAX_REPO_FILES} files; no model repository needs that")
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not COMMIT.fullmatch(sha):
        raise ArtifactError(f"the Hub answered for {at} without a commit sha; cannot pin the revision")
    config = getattr(info, "config", None)
    return RepoFacts(
        repository, sha, {s.rfilename: s.size for s in siblings},
        config if isinstance(config, dict) else {},
        library=getattr(info, "library_name", None),
        tags=frozenset(t for t in (getattr(info, "tags", None) or ()) if isinstance(t, str)),
        pipeline_tag=getattr(info, "pipeline_tag", None),
        source="hub",
    )


# --- the download pattern: the engine's files only ---------------------------------------------------
#
# What snapshot_download fetches (`allow_patterns`, fnmatch: `*` also matches '/'). None: everything.
#   - llamacpp: the one GGUF file served (`modelPath`; all parts of a split file) and its `mmprojModelPath`;
#   - custom images, and the toolkit with a handler.py: everything (their code may read any file);
#   - every other engine: the small files any loader reads (configs, tokenizers, code), plus the
#     weights of `model.framework` only: pytorch → *.safetensors when the repository has any, else
#     *.bin / *.pt / *.pth; tensorflow → *.h5; onnx → *.onnx (+ external data); jax/flax → *.msgpack;
#     any other framework: everything.
SMALL_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "*.jinja", "*.md")
FRAMEWORK_WEIGHTS: Mapping[str, tuple[str, ...]] = {
    "pytorch": ("*.safetensors",),  # or PYTORCH_LEGACY when there are none
    "tensorflow": ("*.h5",),
    "onnx": ("*.onnx", "*.onnx_data", "*.onnx.data"),
    "jax": ("*.msgpack",),
    "flax": ("*.msgpack",),
}
PYTORCH_LEGACY = ("*.bin", "*.pt", "*.pth")
WEIGHT_ENGINES = frozenset({"vllm", "tgi", "sglang", "tei", "huggingface", "hfserve"})
SPLIT_GGUF = re.compile(r"(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf", re.IGNORECASE)


def _matches(files: Mapping[str, Any], patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for name in files for p in patterns)


def download_pattern(image: Mapping[str, Any], framework: str, facts: RepoFacts) -> tuple[str, ...] | None:
    """The allow_patterns for this engine and framework (see the table above); raises ArtifactError
    when the repository holds none of the framework's weights."""
    if facts.source == "local":
        return None  # a local directory is mounted as it is: nothing is downloaded
    (variant, options), = image.items()
    variant = str(variant).lower()
    options = options if isinstance(options, Mapping) else {}
    if variant == "llamacpp":
        patterns = [p for p in (_gguf_pattern(options.get("modelPath")), _gguf_pattern(options.get("mmprojModelPath")))
                    if p is not None]
        return tuple(patterns) or None
    if variant not in WEIGHT_ENGINES or "handler.py" in facts.files:
        return None
    weights = FRAMEWORK_WEIGHTS.get(framework.lower())
    if weights is None:
        return None
    if framework.lower() == "pytorch" and not _matches(facts.files, weights):
        weights = PYTORCH_LEGACY
    if facts.files and not _matches(facts.files, weights):
        have = sorted({PurePosixPath(name).suffix for name in facts.files if PurePosixPath(name).suffix})
        raise ArtifactError(
            f"model.framework {framework!r} needs weights matching {', '.join(weights)} in {facts.repository}, "
            f"which has none (its files end in {', '.join(have) or 'nothing'}); choose the framework of its weights"
        )
    return (*SMALL_FILES, *weights)


def _gguf_pattern(path: Any) -> str | None:
    """The file itself, or every part of a split GGUF (`x-00001-of-00003.gguf` → `x-*-of-00003.gguf`)."""
    if not isinstance(path, str) or not path:
        return None
    split = SPLIT_GGUF.fullmatch(path)
    return f"{split['stem']}-*-of-{split['total']}.gguf" if split else path


async def describe(repository: str, revision: str | None, cache_dir: Path, token: str | None = None,
                   *, hub: Callable[..., RepoFacts] = hub_facts) -> RepoFacts:
    """`RepoFacts` of a local directory or a Hub repository, off the event loop."""
    if is_local(repository):
        return await asyncio.to_thread(local_facts, repository)
    return await asyncio.to_thread(hub, repository, revision, cache_dir, token)
