"""The unit tier: runs in seconds, with no Docker, no subprocess and no browser. A test here that
starts a process fails at once, naming what it tried, so the tier stays what it says."""

import asyncio
import subprocess
from pathlib import Path

import pytest


class ProcessInUnitTier(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise ProcessInUnitTier(f"a unit test started a process ({args[:1]!r}): it belongs in tests/e2e")


async def _refuse_async(*args, **kwargs):
    _refuse(*args, **kwargs)


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _refuse_async)
    monkeypatch.setattr(asyncio, "create_subprocess_shell", _refuse_async)


UNIT = Path(__file__).parent


def pytest_collection_modifyitems(items):
    # A hook of this conftest sees every collected item, not only this folder's.
    for item in items:
        if UNIT in Path(item.path).parents and item.get_closest_marker("docker"):
            raise pytest.UsageError(f"{item.nodeid} needs Docker: it belongs in tests/e2e")
