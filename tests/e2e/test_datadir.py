"""The data directory: private whatever the umask, and held by one serve at a time."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from autoscaler.store import datadir
from autoscaler.store.store import Store


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_directory_is_0700_and_its_files_0600_whatever_the_umask(tmp_path):
    data = tmp_path / "data"
    old = os.umask(0)
    try:
        data.mkdir(mode=0o777)
        (data / "old-file").write_text("x")
        datadir.make_private(data)
        store = await Store.open(data / "endpointd.db")
        await store.add_user("alice")  # a write: the WAL and shared-memory files exist now
        assert {p.name for p in data.iterdir()} >= {"endpointd.db", "endpointd.db-wal", "endpointd.db-shm"}
        await store.close()
    finally:
        os.umask(old)
    assert mode(data) == 0o700
    for entry in data.iterdir():
        assert mode(entry) == 0o600, entry.name


def test_a_second_holder_is_refused_with_a_clear_message(tmp_path):
    fd = datadir.lock(tmp_path)
    try:
        other = subprocess.run(
            [sys.executable, "-c", f"from autoscaler.store import datadir; datadir.lock(__import__('pathlib').Path({str(tmp_path)!r}))"],
            capture_output=True, text=True,
        )
        assert other.returncode != 0
        assert f"another endpointd serve (pid {os.getpid()}) is using the data directory" in other.stderr
        with pytest.raises(datadir.DataDirLocked):
            datadir.lock(tmp_path)  # a second open in the same process conflicts too
    finally:
        os.close(fd)
    os.close(datadir.lock(tmp_path))  # free again once released
