"""Where a local model repository may come from: only from under the directories the operator
lists (`model_roots`), because whatever a user names is mounted into their container.

A user who could name any host path could mount endpointd's own data directory (every secret),
`/var/run` (the Docker socket: `:ro` does not stop `connect()` on a Unix socket) or a device. So a
local repository is accepted only when, after resolving symlinks, it is a directory under a root,
and its whole tree is plain directories and regular files whose symlinks stay under that root.
A root may not be, or contain, the data directory, nor lie in its Hub downloads (`DATA_DIR/hub`,
every namespace's private downloads: downloads.hub_cache).

Errors:
    RootsError      a path or a root is refused; the message names the allowed roots
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .downloads import downloads_dir
from .errors import EndpointdError

# A model repository has thousands of files at most; a tree far larger is refused rather than
# walked (the walk runs on every create and start).
MAX_ENTRIES = 200_000


class RootsError(EndpointdError, ValueError):
    status = 400


@dataclass(frozen=True)
class ModelRoots:
    roots: tuple[Path, ...]  # resolved

    @classmethod
    def configure(cls, configured: Sequence[str], data_dir: Path) -> ModelRoots:
        """The operator's roots (default DATA_DIR/models, created), checked at start."""
        data_dir = data_dir.resolve()
        if not configured:
            default = data_dir / "models"
            default.mkdir(parents=True, exist_ok=True)
            configured = [str(default)]
        roots = []
        for entry in configured:
            path = Path(entry).expanduser()
            if not path.is_absolute():
                raise RootsError(f"serve.model_roots: {entry!r} must be an absolute path")
            if not path.is_dir():
                raise RootsError(f"serve.model_roots: {entry!r} is not a directory")
            root = path.resolve()
            if root == data_dir or data_dir.is_relative_to(root):
                raise RootsError(
                    f"serve.model_roots: {entry!r} is or contains the data directory {data_dir}, whose files "
                    "(secrets, tokens) no container may see; choose a directory outside it"
                )
            downloads = downloads_dir(data_dir)
            if root == downloads or root.is_relative_to(downloads):
                raise RootsError(
                    f"serve.model_roots: {entry!r} is in the Hub downloads directory {downloads}, which holds every "
                    "namespace's private downloads; choose a directory outside it"
                )
            roots.append(root)
        return cls(tuple(roots))

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def check(self, repository: str) -> Path:
        """The resolved directory of a local repository, or RootsError saying why not."""
        allowed = f"local repositories must be directories under one of: {self.describe()} (the operator's model_roots)"
        try:
            path = Path(repository).expanduser().resolve(strict=True)
        except (OSError, RuntimeError):
            raise RootsError(f"model.repository {repository!r} does not exist on this host; {allowed}") from None
        root = next((r for r in self.roots if path == r or path.is_relative_to(r)), None)
        if root is None:
            raise RootsError(f"model.repository {repository!r} is not under a model root; {allowed}")
        if not path.is_dir():
            raise RootsError(f"model.repository {repository!r} is not a directory; {allowed}")
        _check_tree(path, root, repository)
        return path


def _check_tree(top: Path, root: Path, repository: str) -> None:
    """Every entry under `top` is a directory, a regular file, or a symlink that resolves to one
    of those under `root` (what the container would see through it)."""
    seen = 0
    for directory, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            seen += 1
            if seen > MAX_ENTRIES:
                raise RootsError(f"model.repository {repository!r} has more than {MAX_ENTRIES} entries")
            entry = Path(directory, name)
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = entry.resolve(strict=True)
                except (OSError, RuntimeError):
                    raise RootsError(f"model.repository {repository!r}: {entry} is a broken symlink") from None
                if not (target == root or target.is_relative_to(root)):
                    raise RootsError(
                        f"model.repository {repository!r}: {entry} links outside the model root {root}"
                    )
                mode = target.stat().st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise RootsError(
                    f"model.repository {repository!r}: {entry} is not a regular file or directory "
                    "(sockets, devices and pipes are refused)"
                )
