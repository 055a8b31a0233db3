import pytest

from .proxy_harness import Harness


@pytest.fixture
async def harness():
    h = Harness()
    yield h
    await h.close()
