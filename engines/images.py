"""Building endpointd's own images without a registry: a Debian root filesystem made with
debootstrap and imported as `endpointd/base:bookworm`, then the echo engine on top of it."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .docker import DockerRuntime
from .runtime import RuntimeError_

BASE_IMAGE = "endpointd/base:bookworm"
ECHO_IMAGE = "endpointd/echo:latest"
# What the echo engine needs from Debian; minbase keeps the image near 270 MB.
BASE_PACKAGES = ("python3", "python3-aiohttp")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
ECHO_CONTEXT = Path(__file__).parent / "echo"


class BuildError(Exception):
    pass


async def _run(*cmd: str) -> None:
    process = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    if process.returncode != 0:
        tail = "\n".join(output.decode(errors="replace").splitlines()[-15:])
        raise BuildError(f"{cmd[0]} failed with exit code {process.returncode}:\n{tail}")


async def _tar_stream(root: Path) -> AsyncIterator[bytes]:
    process = await asyncio.create_subprocess_exec("tar", "-C", str(root), "-c", ".", stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    while chunk := await process.stdout.read(1 << 20):
        yield chunk
    if await process.wait() != 0:
        raise BuildError(f"tar of {root} failed")


async def build_base(docker: DockerRuntime, progress: Callable[[str], None]) -> None:
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed; install it with `apt-get install -y debootstrap`")
    with tempfile.TemporaryDirectory(prefix="endpointd-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        progress(f"debootstrap bookworm ({', '.join(BASE_PACKAGES)}) into {root} (about a minute)")
        await _run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm", str(root), DEBIAN_MIRROR)
        progress(f"importing {BASE_IMAGE}")
        await docker.import_rootfs(_tar_stream(root), BASE_IMAGE)


async def build_all(force: bool, progress: Callable[[str], None]) -> None:
    docker = DockerRuntime()
    try:
        if force or not await docker.image_exists(BASE_IMAGE):
            await build_base(docker, progress)
        else:
            progress(f"{BASE_IMAGE} exists")
        if force or not await docker.image_exists(ECHO_IMAGE):
            progress(f"building {ECHO_IMAGE} from {ECHO_CONTEXT}")
            await docker.build_image(ECHO_CONTEXT, ECHO_IMAGE)
        else:
            progress(f"{ECHO_IMAGE} exists")
    finally:
        await docker.close()


def main(force: bool = False) -> int:
    def progress(message: str) -> None:
        print(f"endpointd images: {message}", flush=True)

    try:
        asyncio.run(build_all(force, progress))
    except (BuildError, RuntimeError_) as error:
        print(f"endpointd images: {error}", file=sys.stderr)
        return 1
    return 0
