"""Building endpointd's own images without a registry: a Debian root filesystem made with
debootstrap and imported as `endpointd/base:bookworm`, then the echo engine on top of it."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .docker import DockerRuntime
from .runtime import RuntimeError_

BASE_IMAGE = "endpointd/base:bookworm"
ECHO_IMAGE = "endpointd/echo:latest"
# What the echo engine needs from Debian; minbase keeps the image near 260 MB.
BASE_PACKAGES = ("python3", "python3-aiohttp")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
ECHO_CONTEXT = Path(__file__).parent / "echo"
# Lines of a failing command's output shown in its error: debootstrap's reason is in its last ones.
OUTPUT_TAIL = 15

Progress = Callable[[str], None]


CONTEXT_LABEL = "endpointd.context-sha256"
CONTEXT_FILES = ("Dockerfile", "server.py")


def context_digest(context: Path) -> str:
    """SHA-256 over the files an image is built from, so an edit to them triggers a rebuild."""
    digest = hashlib.sha256()
    for name in CONTEXT_FILES:
        digest.update(name.encode() + b"\0" + (context / name).read_bytes() + b"\0")
    return digest.hexdigest()


class BuildError(Exception):
    """An image could not be built; the message says which step failed and why."""


async def _run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        tail = "\n".join(output.decode(errors="replace").splitlines()[-OUTPUT_TAIL:])
        raise BuildError(f"{command[0]} failed with exit code {process.returncode}:\n{tail}")


async def build_base(docker: DockerRuntime, progress: Progress) -> None:
    """debootstrap a minimal Debian with the base packages, tar it, `docker import` it."""
    if shutil.which("debootstrap") is None:
        raise BuildError(f"debootstrap is not installed (needed to build {BASE_IMAGE}); install it with `apt-get install -y debootstrap`")
    with tempfile.TemporaryDirectory(prefix="endpointd-rootfs-") as tmp:
        root, tarball = Path(tmp) / "rootfs", Path(tmp) / "rootfs.tar"
        progress(f"debootstrap {DEBIAN_SUITE} with {', '.join(BASE_PACKAGES)} into {root} (about a minute)")
        await _run(
            "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(root), DEBIAN_MIRROR
        )
        # A whole tarball first, so that a failing tar can never leave a truncated image behind.
        await _run("tar", "-C", str(root), "-cf", str(tarball), ".")
        progress(f"importing {BASE_IMAGE}")
        await docker.import_rootfs(tarball, BASE_IMAGE)


async def build_all(force: bool, progress: Progress) -> None:
    """Build the base and echo images, skipping each one that exists unless `force`."""
    docker = DockerRuntime()
    try:
        rebuilt_base = force or not await docker.image_exists(BASE_IMAGE)
        if rebuilt_base:
            await build_base(docker, progress)
        else:
            progress(f"{BASE_IMAGE} exists")
        digest = context_digest(ECHO_CONTEXT)
        labels = await docker.image_labels(ECHO_IMAGE)
        # A new base, or a changed echo engine (its files' digest is a label), needs a new image.
        if rebuilt_base or labels is None or labels.get(CONTEXT_LABEL) != digest:
            progress(f"building {ECHO_IMAGE} from {ECHO_CONTEXT}")
            await docker.build_image(ECHO_CONTEXT, ECHO_IMAGE, progress=progress, labels={CONTEXT_LABEL: digest})
        else:
            progress(f"{ECHO_IMAGE} is up to date")
    finally:
        await docker.close()


def main(force: bool = False) -> int:
    """`endpointd images build`: 0 when both images are there, 1 with the reason when not."""

    def progress(message: str) -> None:
        print(f"endpointd images: {message}", flush=True)

    try:
        asyncio.run(build_all(force, progress))
    except (BuildError, RuntimeError_, OSError) as error:
        print(f"endpointd images: {error}", file=sys.stderr)
        return 1
    progress("done")
    return 0
