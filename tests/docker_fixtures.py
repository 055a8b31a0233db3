"""Fixtures for tests against the real Docker engine: the engine and the echo image must be there
(CI fails without them, local runs skip), and every container a test starts is removed after it.
Also the Docker CLI, to look at the engine without endpointd's runtime, and a relay that holds
the engine's answer to one request, so that a test can cancel a call at a known point."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from engines.docker import DockerRuntime
from engines.images import ECHO_IMAGE
from engines.runtime import EndpointKey, RuntimeFailure

# tests/run sets it: in CI a missing engine or image fails the tests instead of skipping them.
REQUIRE_DOCKER = "ENDPOINTD_REQUIRE_DOCKER"
# Debian's client for Debian's engine: another `docker` on the PATH may be another build.
DOCKER_CLI = "/usr/bin/docker"
DOCKER_SOCKET = "/var/run/docker.sock"


async def docker_problem() -> str | None:
    """Why the Docker tests cannot run here, or None when they can."""
    runtime = DockerRuntime()
    try:
        if not await runtime.image_exists(ECHO_IMAGE):
            return f"the image {ECHO_IMAGE} is missing: run `endpointd images build`"
    except RuntimeFailure as error:
        return f"no Docker engine ({error}): is dockerd running?"
    finally:
        await runtime.close()
    return None


async def require_docker() -> None:
    """Fail (under ENDPOINTD_REQUIRE_DOCKER=1) or skip, with the reason, when Docker is not usable."""
    problem = await docker_problem()
    if problem is None:
        return
    if os.environ.get(REQUIRE_DOCKER) == "1":
        pytest.fail(f"{problem} ({REQUIRE_DOCKER}=1: Docker tests may not skip)", pytrace=False)
    pytest.skip(f"{problem} (with {REQUIRE_DOCKER}=1 this is a failure)")


@pytest.fixture
def docker_key() -> EndpointKey:
    """An endpoint of the test's own, so that cleaning up by its labels touches nothing else."""
    return EndpointKey(f"test-{uuid.uuid4().hex[:8]}", "echo")


@pytest.fixture
async def docker_runtime(docker_key: EndpointKey):
    """The real Docker engine through endpointd's runtime. The containers and networks of the test's
    namespace (found by their labels, whichever runtime made them: every endpoint a test makes is in
    its key's namespace) are removed after the test, even a failed one."""
    await require_docker()
    runtime = DockerRuntime()
    try:
        yield runtime
    finally:
        try:
            for info in await runtime.list():
                if info.endpoint.namespace == docker_key.namespace:
                    await runtime.stop(info.replica_id, grace_s=0)
            for network in await engine_network_ids(docker_key.namespace):
                await docker_cli("network", "rm", network)
        finally:
            await runtime.close()


async def docker_cli(*args: str) -> str:
    """Run the Docker CLI; its standard output, or AssertionError with its error output."""
    process = await asyncio.create_subprocess_exec(
        DOCKER_CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {process.returncode}: {err.decode().strip()}")
    return out.decode()


async def engine_containers(key: EndpointKey) -> list[str]:
    """`docker ps -a` of the endpoint's containers, in any state: what is there, seen by Docker itself."""
    out = await docker_cli(
        "ps", "-a", "--format", "{{.Names}}",
        "--filter", f"label=endpointd.namespace={key.namespace}", "--filter", f"label=endpointd.name={key.name}",
    )
    return out.split()


async def engine_networks(namespace: str, name: str | None = None) -> list[str]:
    """`docker network ls` of the networks labelled with this namespace (and endpoint name)."""
    filters = ["--filter", f"label=endpointd.namespace={namespace}"]
    if name is not None:
        filters += ["--filter", f"label=endpointd.name={name}"]
    return sorted((await docker_cli("network", "ls", "--format", "{{.Name}}", *filters)).split())


async def engine_network_ids(namespace: str) -> list[str]:
    """The ids of the networks labelled with this namespace (a name may be ambiguous: Docker makes
    two networks of one name when asked at once)."""
    return (await docker_cli("network", "ls", "-q", "--no-trunc", "--filter", f"label=endpointd.namespace={namespace}")).split()


async def docker_inspect(kind: str, target: str) -> dict:
    """`docker inspect` of one container or network, as Docker itself shows it."""
    [data] = json.loads(await docker_cli(kind, "inspect", target))
    return data


@dataclass
class Gate:
    """Holds the engine's answer to the first request matching `pattern` (method and path, e.g.
    `POST /v1.41/containers/create`) after the engine has done it, until `release` is set."""

    pattern: str | None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def gated_engine(pattern: str | None) -> AsyncIterator[tuple[Gate, str]]:
    """A relay to the real engine on a socket of its own, and its Docker URL. Only for plain
    request-answer calls (create, start, inspect, delete), not for streams."""
    gate = Gate(pattern)
    with tempfile.TemporaryDirectory(prefix="endpointd-relay-") as directory:  # short: a socket path has a length limit
        path = os.path.join(directory, "docker.sock")
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=DOCKER_SOCKET)) as engine:

            async def relay(request: web.Request) -> web.Response:
                headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
                async with engine.request(
                    request.method, f"http://docker{request.rel_url}", data=await request.read(), headers=headers
                ) as answer:
                    body, content_type = await answer.read(), answer.headers.get("Content-Type")
                held = gate.pattern and re.fullmatch(gate.pattern, f"{request.method} {request.path}")
                if held and not gate.reached.is_set():
                    gate.reached.set()
                    await gate.release.wait()
                return web.Response(status=answer.status, body=body, headers=(
                    {"Content-Type": content_type} if content_type else None
                ))

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", relay)
            runner = web.AppRunner(app)
            await runner.setup()
            try:
                await web.UnixSite(runner, path).start()
                yield gate, f"unix://{path}"
            finally:
                gate.release.set()
                await runner.cleanup()
