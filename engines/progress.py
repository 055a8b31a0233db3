"""What a long wait has done so far, as the sentence the endpoint's status message shows: a model
download in bytes done of the total, an image pull in layers and bytes. Each sentence ends in
"(N %)", which the dashboard's progress bar reads (autoscaler/dashboard/format.js `progressOf`).

Pure: the sources (artifacts' download, docker's pull stream) feed numbers in; `key` says when a
sentence is worth reporting, so a status is written once per percent, not once per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size(n: int) -> str:
    """Bytes as people read them (binary units, as the dashboard's `bytes`)."""
    value, unit = float(max(0, n)), 0
    while value >= 1024 and unit < len(UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.1f} {UNITS[unit]}" if unit else f"{int(value)} B"


def percent(done: float, total: float) -> int:
    """Whole percent, 100 only once all is done (a bar that says 100 while work remains lies)."""
    if total <= 0:
        return 0
    share = int(100 * min(done, total) // total)
    return 99 if share == 100 and done < total else share


def download_message(repository: str, done: int, total: int | None) -> str:
    head = f"fetching model artifacts of {repository}"
    if not total:
        return f"{head}: {size(done)} so far"
    total = max(total, done)  # files still starting add to the total; never show more done than total
    return f"{head}: {size(done)} of {size(total)} ({percent(done, total)} %)"


def download_key(done: int, total: int | None) -> tuple[int, int]:
    """Reported again when this changes: the total, or the whole percent (10 MiB steps when the
    total is unknown)."""
    if not total:
        return 0, done // (10 << 20)
    return max(total, done), percent(done, max(total, done))


# Docker's pull stream (POST /images/create): one JSON object per line, per layer `id`, e.g.
#   {"status": "Pulling fs layer", "id": "a1b2"}   {"status": "Waiting", "id": "a1b2"}
#   {"status": "Downloading", "id": "a1b2", "progressDetail": {"current": 1024, "total": 31457280}}
#   {"status": "Verifying Checksum" | "Download complete", "id": "a1b2"}
#   {"status": "Extracting", "id": "a1b2", "progressDetail": {"current": ..., "total": ...}}
#   {"status": "Pull complete" | "Already exists", "id": "a1b2"}
# plus lines about the image itself ("Pulling from library/x" with the tag as id, "Digest: …",
# "Status: Downloaded newer image …"), which are not layers.
DOWNLOADED = frozenset({"Verifying Checksum", "Download complete"})
LAYER_DONE = frozenset({"Pull complete", "Already exists"})
MOVING = frozenset({"Downloading", "Extracting", "Pull complete", *DOWNLOADED})  # a layer being pulled


@dataclass
class _Layer:
    downloaded: int = 0
    size: int = 0  # 0: not known yet (Docker says it once the layer's download starts)
    extracted: float = 0.0  # share of the extraction done
    phase: str = "waiting"  # waiting, downloading, downloaded, extracting, done


def _numbers(current: Any, total: Any) -> tuple[int, int] | None:
    """A layer's (current, total) bytes when Docker gave both and a total above 0."""
    return (current, total) if isinstance(current, int) and isinstance(total, int) and total > 0 else None


@dataclass
class PullProgress:
    """Layers and bytes of one image pull. A layer weighs the same whatever its size (Docker does not
    say every size up front): half for its download, half for its extraction, so the percent never
    goes back when a new layer's size becomes known."""

    image: str
    layers: dict[str, _Layer] = field(default_factory=dict)
    # Docker names every layer ("Already exists", "Pulling fs layer", "Waiting") before any
    # download starts: until one does, the layers known may not be all, so no percent yet.
    pulling: bool = False

    def feed(self, line: Mapping[str, Any]) -> None:
        status, layer_id = line.get("status"), line.get("id")
        if not isinstance(status, str) or not isinstance(layer_id, str) or not layer_id:
            return
        if status.startswith("Pulling from"):  # its id is the tag, not a layer
            return
        detail = line.get("progressDetail")
        detail = detail if isinstance(detail, Mapping) else {}
        numbers = _numbers(detail.get("current"), detail.get("total"))
        layer = self.layers.setdefault(layer_id, _Layer())
        self.pulling = self.pulling or status in MOVING
        if status == "Downloading":
            layer.phase = "downloading"
            if numbers is not None:
                current, total = numbers
                layer.downloaded, layer.size = min(current, total), total
        elif status in DOWNLOADED:
            layer.phase = "downloaded"
            layer.downloaded = layer.size
        elif status == "Extracting":
            layer.phase = "extracting"
            layer.downloaded = layer.size
            if numbers is not None:
                current, total = numbers
                layer.extracted = min(1.0, current / total)
        elif status in LAYER_DONE:
            layer.phase, layer.extracted = "done", 1.0
            layer.downloaded = layer.size
        # any other status ("Pulling fs layer", "Waiting", "Retrying in 5 seconds") only makes the layer known

    def _share(self, layer: _Layer) -> float:
        if layer.phase == "done":
            return 1.0
        if layer.phase in ("downloaded", "extracting"):
            return 0.5 + 0.5 * layer.extracted
        if layer.phase == "downloading" and layer.size:
            return 0.5 * layer.downloaded / layer.size
        return 0.0

    def percent(self) -> int:
        if not self.layers or not self.pulling:
            return 0
        return percent(sum(self._share(layer) for layer in self.layers.values()), len(self.layers))

    def key(self) -> tuple[int, int, int]:
        """Reported again when this changes: layers known, layers done, whole percent."""
        done = sum(1 for layer in self.layers.values() if layer.phase == "done")
        return len(self.layers), done, self.percent()

    def message(self) -> str:
        count, done, share = self.key()
        if not count:
            return f"pulling image {self.image}"
        if not self.pulling:
            return f"pulling image {self.image}: {count} layers, {done} already on this host"
        downloaded = sum(layer.downloaded for layer in self.layers.values())
        known = sum(layer.size for layer in self.layers.values())
        bytes_part = f", {size(downloaded)} of {size(known)} downloaded" if known else ""
        return f"pulling image {self.image}: {done} of {count} layers done{bytes_part} ({share} %)"
