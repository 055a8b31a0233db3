"""Where Hub downloads live: a huggingface_hub cache of their own per namespace,
`DATA_DIR/hub/<namespace>`, never under a model root. A tenant who names a path gets only what the
model roots hold, never another namespace's download, and an endpoint is fetched into, and given,
only its own namespace's cache (artifacts.fetch, the launcher).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("endpointd.downloads")

# The folder of the data directory that holds every namespace's Hub cache.
DOWNLOADS_DIR = "hub"
# A namespace that is a plain file name is its cache's folder name; any other is hashed (a "~"
# first, which no plain name starts with, so two namespaces never share a folder).
PLAIN_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def downloads_dir(data_dir: Path) -> Path:
    return data_dir / DOWNLOADS_DIR


def hub_cache(downloads: Path, namespace: str) -> Path:
    """The huggingface_hub cache of one namespace's downloads."""
    if PLAIN_NAMESPACE.fullmatch(namespace) and ".." not in namespace:
        return downloads / namespace
    return downloads / ("~" + hashlib.sha256(namespace.encode("utf-8", "surrogateescape")).hexdigest())


# Where an endpointd before per-namespace caches left its downloads: the default model root.
OLD_DOWNLOADS = "models"
UNOWNED = "~unowned"  # under DOWNLOADS_DIR: those old downloads, no namespace's ("~" + not a sha256)


def move_old_downloads(old: Path, downloads: Path) -> list[str]:
    """Move the Hub downloads an older endpointd left in `old` (DATA_DIR/models, the default model
    root, where any tenant could name them as a local repository) to `downloads/~unowned`, where no
    endpoint is given them; returns the names moved. A folder that cannot be moved stays, logged."""
    if not old.is_dir():
        return []
    found = sorted(p for p in old.iterdir()
                   if p.name.startswith("models--") and not p.is_symlink() and (p / "snapshots").is_dir())
    if not found:
        return []
    target = downloads / UNOWNED
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    moved = []
    for path in found:
        try:
            os.rename(path, target / path.name)
            moved.append(path.name)
        except OSError as error:
            log.warning("could not move the old Hub download %s out of the model root (%s): any tenant may still "
                        "name it as a local repository; move or delete it", path, error)
    if moved:
        log.warning("moved %d Hub download(s) of an older endpointd out of the model root %s into %s, where no "
                    "endpoint uses them (each namespace now downloads into %s/<namespace>); copy one there to "
                    "reuse it offline, or delete the folder", len(moved), old, target, downloads)
    return moved
