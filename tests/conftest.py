import asyncio
import os

import pytest

from .proxy_harness import Harness


@pytest.fixture
async def harness():
    h = Harness()
    yield h
    await h.close()


async def _docker_problem() -> str | None:
    from engines.docker import DockerRuntime
    from engines.images import ECHO_IMAGE
    from engines.runtime import RuntimeError_

    runtime = DockerRuntime()
    try:
        if not await runtime.image_exists(ECHO_IMAGE):
            return f"image {ECHO_IMAGE} is missing: run `endpointd images build`"
    except RuntimeError_ as error:
        return f"no Docker engine: {error}"
    finally:
        await runtime.close()
    return None


def _require(problem: str | None) -> None:
    """In CI (ENDPOINTD_REQUIRE_DOCKER=1) a missing engine or image is a failure, never a skip;
    locally, without that variable, the test is skipped with the reason."""
    if problem is None:
        return
    if os.environ.get("ENDPOINTD_REQUIRE_DOCKER") == "1":
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture
def docker_engine():
    """The real Docker engine with the echo image, for tests that drive it from another process."""
    _require(asyncio.run(_docker_problem()))


@pytest.fixture
async def docker_runtime():
    """The real Docker engine, through endpointd's runtime; test containers are removed after."""
    from engines.docker import DockerRuntime

    _require(await _docker_problem())
    runtime = DockerRuntime()
    yield runtime
    for info in await runtime.list():
        if info.endpoint.namespace.startswith("test"):
            await runtime.stop(info.replica_id, 0)
    await runtime.close()
