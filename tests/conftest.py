import asyncio

import pytest

from .docker_fixtures import docker_key, docker_runtime, require_docker  # noqa: F401 - fixtures
from .proxy_harness import Harness


@pytest.fixture
async def harness():
    h = Harness()
    yield h
    await h.close()


@pytest.fixture
def docker_engine():
    """The real Docker engine with the echo image, for tests that drive it from another process."""
    asyncio.run(require_docker())
