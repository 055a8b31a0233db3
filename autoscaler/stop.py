"""`endpointd stop`: end the `endpointd serve` of one data directory, by the pid it holds the
directory with (never by name: other people's endpointd processes on the host are left alone), and
say what it leaves running. Replica containers outlive a serve by design, so that the next one
adopts them; `--remove` removes them and their networks too.

Only this endpointd's containers and networks are touched: those labelled with the instance id of
the data directory (`startup.INSTANCE_FILE`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from autoscaler.startup import INSTANCE_FILE
from autoscaler.store import datadir
from engines.runtime import EndpointKey, ReplicaInfo, RuntimeFailure, network_name

POLL_S = 0.1
STOP_GRACE_S = 10.0  # what a replica gets to finish when removed, as when serve stops one


def stop(data_dir: Path, *, remove: bool, timeout_s: float, say: Callable[[str], None] = print) -> int:
    """0 when this data directory's serve is not running (any more), and with `remove` nothing of
    it is left; 1 with the reason when not."""
    data_dir = data_dir.absolute()
    pid = datadir.serving_pid(data_dir)
    if pid is None:
        where = "" if data_dir.is_dir() else " (there is no such directory; to stop another one, pass its --data-dir)"
        say(f"no endpointd serve runs on {data_dir}{where}")
    elif not _end(pid, data_dir, timeout_s, say):
        return 1
    instance_file = data_dir / INSTANCE_FILE
    if not instance_file.is_file():
        return 0  # no serve ever started containers from here
    return asyncio.run(_left_behind(instance_file.read_text().strip(), data_dir, remove, say))


def _end(pid: int, data_dir: Path, timeout_s: float, say: Callable[[str], None]) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid == 0 and time.monotonic() < deadline:  # holds the directory, has not written its pid yet
        time.sleep(POLL_S)
        pid = datadir.serving_pid(data_dir) or 0
    if pid == 0:
        say(f"the endpointd serve on {data_dir} did not write its pid within {timeout_s:g} s; nothing was stopped")
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it exited meanwhile
    except PermissionError:
        say(f"endpointd serve (pid {pid}) of {data_dir} belongs to another user; nothing was stopped")
        return False
    say(f"sent SIGTERM to endpointd serve (pid {pid}) of {data_dir}; it finishes its requests, then exits")
    while datadir.serving_pid(data_dir) is not None:
        if time.monotonic() >= deadline:
            say(f"endpointd serve (pid {pid}) is still running after {timeout_s:g} s; try again, or give it longer "
                "with --timeout")
            return False
        time.sleep(POLL_S)
    say(f"endpointd serve (pid {pid}) has stopped")
    return True


async def _left_behind(instance: str, data_dir: Path, remove: bool, say: Callable[[str], None]) -> int:
    from engines.docker import DockerRuntime

    runtime = DockerRuntime(instance=instance)
    try:
        replicas = await runtime.list()
        networks = await runtime.networks()
        if not replicas and not networks:
            say("nothing of it is left running")
            return 0
        if not remove:
            _tell(replicas, networks, instance, data_dir, say)
            return 0
        for info in replicas:
            await runtime.stop(info.replica_id, STOP_GRACE_S)
            say(f"removed container {info.container_name} ({info.endpoint} replica {info.replica_id})")
        for key in networks:
            await runtime.remove_network(key)
            say(f"removed network {network_name(instance, key)} ({key})")
        say("nothing of it is left running")
        return 0
    except RuntimeFailure as error:
        say(f"could not ask Docker what it left running: {error}")
        return 1
    finally:
        await runtime.close()


def _tell(replicas: list[ReplicaInfo], networks: list[EndpointKey], instance: str, data_dir: Path,
          say: Callable[[str], None]) -> None:
    say(f"left running, for the next `endpointd serve --data-dir {data_dir}` to adopt:")
    for info in sorted(replicas, key=lambda i: (str(i.endpoint), i.replica_id)):
        port = f", engine port {info.address}" if info.address else ""
        say(f"  {info.endpoint}  replica {info.replica_id}  container {info.container_name} ({info.status}{port})")
    for key in networks:
        say(f"  {key}  network {network_name(instance, key)}")
    say(f"to remove them too: endpointd stop --remove --data-dir {data_dir}")
