"""Building endpointd's own images without a registry: a Debian root filesystem made with
debootstrap and imported as `endpointd/base:bookworm`, then on top of it the echo engine, the
inference toolkit, llama.cpp's server and endpointd itself.

Every image built here carries a digest of what it is built from (CONTEXT_LABEL) and is rebuilt
only when that digest changes, or when the base is rebuilt: CI runs `endpointd images build` on
every run, and the toolkit takes minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .docker import DockerRuntime
from .errors import EndpointdError
from .gpus import read_inventory
from .pinned import LLAMA_CPP_BUILD, LLAMA_CPP_SOURCE, FetchError, fetch
from .presets import DEFAULT_IMAGES, LOCAL_IMAGES
from .runtime import RuntimeFailure

BASE_IMAGE = "endpointd/base:bookworm"
ECHO_IMAGE = "endpointd/echo:latest"
# The tag the `huggingface` preset runs: one constant, so that the preset and the build agree.
TOOLKIT_IMAGE = DEFAULT_IMAGES["huggingface"]
ENDPOINTD_IMAGE = "endpointd/endpointd:latest"
# llama.cpp's server built here from the pinned source; the `llamacpp` preset runs it when present.
LLAMA_CPP_IMAGE = LOCAL_IMAGES["llamacpp"]
LLAMA_CPP_CUDA_IMAGE = LOCAL_IMAGES["llamacpp-gpu"]
TOOLKIT_CUDA_IMAGE = LOCAL_IMAGES["huggingface-gpu"]
# What the echo engine needs from Debian; minbase keeps the image near 260 MB. The toolkit and
# endpointd's own image bring their Python packages with pip (a wheel copied in), not Debian's.
BASE_PACKAGES = ("python3", "python3-aiohttp")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
ECHO_CONTEXT = Path(__file__).parent / "echo"
TOOLKIT_CONTEXT = Path(__file__).parent / "toolkit"
LLAMA_CPP_CONTEXT = Path(__file__).parent / "llamacpp"
LLAMA_CPP_PATCH = "openai-first-delta.patch"  # applied to the source before the build
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Lines of a failing command's output shown in its error: debootstrap's reason is in its last ones.
OUTPUT_TAIL = 15

# The toolkit's build inputs from the host: TLS to the package index goes through a
# proxy whose CA is only in this bundle; torch's CPU wheel lies on disk (the index's torch is the
# CUDA build, gigabytes of nvidia-* wheels); Debian's own pip wheel (the base has no pip).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TORCH_WHEELS = Path("/opt/wheels")
TORCH_WHEEL_GLOB = "torch-*+cpu-cp311-*.whl"
PIP_WHEELS = Path("/usr/share/python-wheels")

Progress = Callable[[str], None]


CONTEXT_LABEL = "endpointd.context-sha256"
# The echo image's inputs: its server and the shims that start it as vLLM or SGLang.
ECHO_SHIMS = ("shims/vllm/entrypoints/openai/api_server.py", "shims/sglang/launch_server.py")
CONTEXT_FILES = ("Dockerfile", "server.py", *ECHO_SHIMS)
TOOLKIT_FILES = ("Dockerfile", "requirements.txt", "__init__.py", "tasks.py", "handlers.py", "server.py",
                 "openai_embeddings.py")
# endpointd's own image: its Dockerfile, and what `pip wheel` builds it from.
ENDPOINTD_FILES = ("Dockerfile", "pyproject.toml", "README.md")
ENDPOINTD_PACKAGES = ("proxy", "autoscaler", "engines")


def _digest(items: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, content in items:
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def context_digest(context: Path, files: Iterable[str] = CONTEXT_FILES, extra: Iterable[str] = ()) -> str:
    """SHA-256 over the files an image is built from (and `extra` names, such as a wheel's file
    name), so an edit to them triggers a rebuild."""
    return _digest([*((name, (context / name).read_bytes()) for name in files), *((name, b"") for name in extra)])


def project_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files endpointd's own image is built from, relative to `root`, in a stable order."""
    found = [Path(name) for name in ENDPOINTD_FILES]
    for package in ENDPOINTD_PACKAGES:
        found += sorted(
            path.relative_to(root) for path in (root / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
        )
    return found


class BuildError(EndpointdError):
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


def torch_wheel(wheels: Path = TORCH_WHEELS) -> Path | None:
    """The newest CPU wheel of torch on disk, or None (the build then uses the CPU index)."""
    found = sorted(wheels.glob(TORCH_WHEEL_GLOB)) if wheels.is_dir() else []
    return found[-1] if found else None


async def pip_wheel(dest: Path, progress: Progress) -> Path:
    """A wheel of pip in `dest`: Debian's own when the host has python3-pip-whl, else downloaded."""
    found = sorted(PIP_WHEELS.glob("pip-*.whl")) if PIP_WHEELS.is_dir() else []
    if found:
        return Path(shutil.copy2(found[-1], dest))
    progress("downloading a pip wheel (the host has no /usr/share/python-wheels/pip-*.whl)")
    await _run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dest), "pip")
    return next(dest.glob("pip-*.whl"))


# The CUDA variants (`endpointd images build --cuda`, or a host where NVML sees a GPU). Untested
# here: no GPU and no registry reach this project's machines.
CUDA_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"
CUDA_VERSION = "12.8.1"
CUDA_LLAMA_ARGS = {  # engines/llamacpp/Dockerfile.cuda
    "BUILD_BASE": f"nvidia/cuda:{CUDA_VERSION}-devel-ubuntu24.04",
    "RUN_BASE": f"nvidia/cuda:{CUDA_VERSION}-runtime-ubuntu24.04",
}


@dataclass(frozen=True)
class Toolkit:
    """The toolkit's build inputs: its files' and wheels' digest says when to rebuild."""

    torch: Path | None
    torch_index: str | None = None  # a CUDA index: the wheel on disk (a CPU build) is not used

    @property
    def digest(self) -> str:
        where = self.torch_index or (self.torch.name if self.torch else "cpu-index")
        return context_digest(TOOLKIT_CONTEXT, TOOLKIT_FILES, [f"torch={where}"])


async def build_toolkit(
    docker: DockerRuntime, toolkit: Toolkit, progress: Progress, tag: str = TOOLKIT_IMAGE, nocache: bool = False
) -> None:
    """The toolkit's context in a temporary directory (its files, a pip wheel, the CA bundle and
    the torch wheel), then `docker build`; pip runs inside the build, through the CA bundle."""
    if not CA_BUNDLE.is_file():
        raise BuildError(f"{CA_BUNDLE} is missing: the toolkit's build needs the host's CA bundle (apt-get install -y ca-certificates)")
    with tempfile.TemporaryDirectory(prefix="endpointd-toolkit-") as tmp:
        context = Path(tmp)
        for name in TOOLKIT_FILES:
            shutil.copy2(TOOLKIT_CONTEXT / name, context / name)
        (context / "build").mkdir()
        (context / "torch").mkdir()
        shutil.copy2(CA_BUNDLE, context / "build" / CA_BUNDLE.name)
        await pip_wheel(context / "build", progress)
        buildargs = {}
        if toolkit.torch_index is not None:
            progress(f"torch from {toolkit.torch_index}")
            buildargs["TORCH_INDEX"] = toolkit.torch_index
        elif toolkit.torch is not None:
            progress(f"torch from {toolkit.torch}")
            shutil.copy2(toolkit.torch, context / "torch" / toolkit.torch.name)
        else:
            progress(f"no torch wheel in {TORCH_WHEELS}: the build installs torch from its CPU index")
        await docker.build_image(context, tag, progress=progress, labels={CONTEXT_LABEL: toolkit.digest},
                                 nocache=nocache, buildargs=buildargs or None)


def endpointd_digest(root: Path = PROJECT_ROOT) -> str:
    return _digest((str(path), (root / path).read_bytes()) for path in project_files(root))


async def build_endpointd(docker: DockerRuntime, progress: Progress, root: Path = PROJECT_ROOT) -> None:
    """endpointd's own image, offline from the base: `pip wheel` on the host makes a wheelhouse
    (endpointd and its dependencies, through the host's pip), which the top-level Dockerfile
    installs with `--no-index` when the context has one (BASE=endpointd/base:bookworm)."""
    with tempfile.TemporaryDirectory(prefix="endpointd-image-") as tmp:
        context, source = Path(tmp) / "context", Path(tmp) / "source"
        wheelhouse = context / "wheelhouse"
        wheelhouse.mkdir(parents=True)
        for path in project_files(root):
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / path, source / path)
        shutil.copy2(root / "Dockerfile", context / "Dockerfile")
        progress(f"pip wheel of endpointd and its dependencies into {wheelhouse}")
        await _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse), str(source))
        await pip_wheel(wheelhouse, progress)
        await docker.build_image(
            context, ENDPOINTD_IMAGE, progress=progress, labels={CONTEXT_LABEL: endpointd_digest(root)},
            buildargs={"BASE": BASE_IMAGE},
        )


def llamacpp_dockerfile(cuda: bool) -> str:
    return "Dockerfile.cuda" if cuda else "Dockerfile"


def llamacpp_digest(cuda: bool = False) -> str:
    """The llama.cpp image's inputs: its Dockerfile and the pinned source's sha256 (and CUDA's args)."""
    extra = [f"source={LLAMA_CPP_SOURCE.sha256}", *(f"{k}={v}" for k, v in sorted(CUDA_LLAMA_ARGS.items()) if cuda)]
    return context_digest(LLAMA_CPP_CONTEXT, (llamacpp_dockerfile(cuda), LLAMA_CPP_PATCH), extra)


async def build_llamacpp(docker: DockerRuntime, progress: Progress, cuda: bool = False) -> None:
    """The pinned llama.cpp source (fetched once into the cache, sha256 checked) and the Dockerfile
    in a temporary context, then `docker build`: llama-server compiles in the first stage."""
    source = await fetch(LLAMA_CPP_SOURCE, progress)
    with tempfile.TemporaryDirectory(prefix="endpointd-llamacpp-") as tmp:
        context = Path(tmp)
        dockerfile = llamacpp_dockerfile(cuda)
        shutil.copy2(LLAMA_CPP_CONTEXT / dockerfile, context / "Dockerfile")
        shutil.copy2(LLAMA_CPP_CONTEXT / LLAMA_CPP_PATCH, context / LLAMA_CPP_PATCH)
        try:  # a hard link when the cache is on the same file system: 77 MB not copied
            (context / "source.tar.gz").hardlink_to(source)
        except OSError:
            shutil.copy2(source, context / "source.tar.gz")
        await docker.build_image(
            context, LLAMA_CPP_CUDA_IMAGE if cuda else LLAMA_CPP_IMAGE, progress=progress,
            labels={CONTEXT_LABEL: llamacpp_digest(cuda)},
            buildargs={"LLAMA_BUILD": LLAMA_CPP_BUILD, **(CUDA_LLAMA_ARGS if cuda else {"BASE": BASE_IMAGE})},
        )


async def _stale(docker: DockerRuntime, image: str, digest: str, rebuilt_base: bool) -> bool:
    """Whether `image` must be (re)built: a new base, no image, or other inputs than its label's."""
    labels = await docker.image_labels(image)
    return rebuilt_base or labels is None or labels.get(CONTEXT_LABEL) != digest


IMAGE_NAMES = ("echo", "toolkit", "llamacpp", "endpointd")


def host_has_gpus() -> bool:
    return bool(read_inventory())


async def build_all(force: bool, progress: Progress, only: Iterable[str] | None = None, cuda: bool | None = None) -> None:
    """Build the base, echo, toolkit, llama.cpp and endpointd images, skipping each one that is up
    to date unless `force`. `only`: a subset of IMAGE_NAMES (the base always). `cuda`: also the
    CUDA builds of the toolkit and llama.cpp (None: when NVML sees a GPU on this host)."""
    wanted = set(only) if only is not None else set(IMAGE_NAMES)
    if cuda is None:
        cuda = host_has_gpus()
        if cuda:
            progress("NVML sees GPUs on this host: building the CUDA variants of the toolkit and llama.cpp too")
    docker = DockerRuntime()
    try:
        rebuilt_base = force or not await docker.image_exists(BASE_IMAGE)
        if rebuilt_base:
            await build_base(docker, progress)
        else:
            progress(f"{BASE_IMAGE} exists")
        if "echo" in wanted:
            digest = context_digest(ECHO_CONTEXT)
            if await _stale(docker, ECHO_IMAGE, digest, rebuilt_base):
                progress(f"building {ECHO_IMAGE} from {ECHO_CONTEXT}")
                await docker.build_image(ECHO_CONTEXT, ECHO_IMAGE, progress=progress, labels={CONTEXT_LABEL: digest})
            else:
                progress(f"{ECHO_IMAGE} is up to date")
        if "toolkit" in wanted:
            toolkit = Toolkit(torch=torch_wheel())
            if await _stale(docker, TOOLKIT_IMAGE, toolkit.digest, rebuilt_base):
                progress(f"building {TOOLKIT_IMAGE} from {TOOLKIT_CONTEXT} (several minutes: torch, transformers)")
                started = time.monotonic()
                await build_toolkit(docker, toolkit, progress)
                progress(f"built {TOOLKIT_IMAGE} in {time.monotonic() - started:.0f} s")
            else:
                progress(f"{TOOLKIT_IMAGE} is up to date")
            cuda_toolkit = Toolkit(torch=None, torch_index=CUDA_TORCH_INDEX)
            if cuda and await _stale(docker, TOOLKIT_CUDA_IMAGE, cuda_toolkit.digest, rebuilt_base):
                progress(f"building {TOOLKIT_CUDA_IMAGE} (torch from {CUDA_TORCH_INDEX}: gigabytes)")
                await build_toolkit(docker, cuda_toolkit, progress, tag=TOOLKIT_CUDA_IMAGE)
        if "llamacpp" in wanted:
            if await _stale(docker, LLAMA_CPP_IMAGE, llamacpp_digest(), rebuilt_base):
                progress(f"building {LLAMA_CPP_IMAGE} from {LLAMA_CPP_CONTEXT} (compiles llama-server: "
                         f"10 to 20 minutes on 2 cores; the steps below count the files)")
                started = time.monotonic()
                await build_llamacpp(docker, progress)
                progress(f"built {LLAMA_CPP_IMAGE} in {time.monotonic() - started:.0f} s")
            else:
                progress(f"{LLAMA_CPP_IMAGE} is up to date")
            if cuda and await _stale(docker, LLAMA_CPP_CUDA_IMAGE, llamacpp_digest(cuda=True), rebuilt_base):
                progress(f"building {LLAMA_CPP_CUDA_IMAGE} on {CUDA_LLAMA_ARGS['BUILD_BASE']}")
                await build_llamacpp(docker, progress, cuda=True)
        if "endpointd" in wanted:
            if await _stale(docker, ENDPOINTD_IMAGE, endpointd_digest(), rebuilt_base):
                progress(f"building {ENDPOINTD_IMAGE} from {PROJECT_ROOT / 'Dockerfile'}")
                await build_endpointd(docker, progress)
            else:
                progress(f"{ENDPOINTD_IMAGE} is up to date")
    finally:
        await docker.close()


def main(force: bool = False, only: Iterable[str] | None = None, cuda: bool | None = None) -> int:
    """`endpointd images build`: 0 when the images are there, 1 with the reason when not."""

    def progress(message: str) -> None:
        print(f"endpointd images: {message}", flush=True)

    try:
        asyncio.run(build_all(force, progress, only, cuda))
    except (BuildError, FetchError, RuntimeFailure, OSError) as error:
        print(f"endpointd images: {error}", file=sys.stderr)
        return 1
    progress("done")
    return 0


if __name__ == "__main__":  # `python -m engines.images [echo|toolkit|llamacpp|endpointd ...]`
    sys.exit(main(only=sys.argv[1:] or None))
