"""Fixtures for tests against the real Docker engine: the engine and the echo image must be there
(CI fails without them, local runs skip), and every container a test starts is removed after it."""

from __future__ import annotations

import os
import uuid

import pytest

from engines.docker import DockerRuntime
from engines.images import ECHO_IMAGE
from engines.runtime import EndpointKey, RuntimeError_

# tests/run sets it: in CI a missing engine or image fails the tests instead of skipping them.
REQUIRE_DOCKER = "ENDPOINTD_REQUIRE_DOCKER"


async def docker_problem() -> str | None:
    """Why the Docker tests cannot run here, or None when they can."""
    runtime = DockerRuntime()
    try:
        if not await runtime.image_exists(ECHO_IMAGE):
            return f"the image {ECHO_IMAGE} is missing: run `endpointd images build`"
    except RuntimeError_ as error:
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
    """The real Docker engine through endpointd's runtime. The test endpoint's containers (found
    by their labels, whichever runtime started them) are removed after the test, even a failed one."""
    await require_docker()
    runtime = DockerRuntime()
    try:
        yield runtime
    finally:
        try:
            for info in await runtime.list(docker_key):
                await runtime.stop(info.replica_id, grace_s=0)
        finally:
            await runtime.close()
