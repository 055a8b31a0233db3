import os

import pytest

from .proxy_harness import Harness


@pytest.fixture
async def harness():
    h = Harness()
    yield h
    await h.close()


@pytest.fixture
async def docker_runtime():
    """The real Docker engine. In CI (ENDPOINTD_REQUIRE_DOCKER=1) a missing engine or image is a
    failure, never a skip; locally, without that variable, the test is skipped with the reason."""
    from engines.docker import DockerRuntime
    from engines.images import ECHO_IMAGE
    from engines.runtime import RuntimeError_

    runtime = DockerRuntime()
    problem = None
    try:
        if not await runtime.image_exists(ECHO_IMAGE):
            problem = f"image {ECHO_IMAGE} is missing: run `endpointd images build`"
    except RuntimeError_ as error:
        problem = f"no Docker engine: {error}"
    if problem:
        await runtime.close()
        if os.environ.get("ENDPOINTD_REQUIRE_DOCKER") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    yield runtime
    for info in await runtime.list():
        if info.endpoint.namespace.startswith("test"):
            await runtime.stop(info.replica_id, 0)
    await runtime.close()
