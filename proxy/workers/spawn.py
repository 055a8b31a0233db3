"""Starting, watching and stopping the worker processes from the main process.

A worker that exits while the server runs is logged and started again after RESTART_DELAY_S
(its counts were dropped by the hub when its channel closed). At shutdown each worker gets
SIGTERM when the main process's drain begins, and drains as it does; one still alive `drain_timeout_s` +
CLEANUP_GRACE_S later is killed."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from ..core.config import ProxyConfig
from ..core.pipeline import Pipeline
from ..raw.server import RawServer
from .hub import WorkerHub

log = logging.getLogger("endpointd.proxy")

READY_TIMEOUT_S = 60.0  # a worker imports the proxy and binds: seconds on a loaded machine
RESTART_DELAY_S = 1.0
STOP_GRACE_S = 5.0
ROOT = str(Path(__file__).resolve().parent.parent.parent)  # the directory holding the `proxy` package


class Workers:
    def __init__(self, hub: WorkerHub, count: int, directory: str):
        self.hub = hub
        self.count = count  # worker processes beside the main one
        self.directory = directory
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: list[asyncio.Task] = []
        self._stopping = False

    async def start(self) -> None:
        for i in range(1, self.count + 1):
            worker = str(i)
            self.hub.ready.setdefault(worker, asyncio.Event())
            await self._spawn(worker)
            self._watchers.append(asyncio.get_running_loop().create_task(self._watch(worker)))
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await asyncio.gather(*(self.hub.ready[str(i)].wait() for i in range(1, self.count + 1)))
        except TimeoutError:
            missing = [w for w in self._processes if not self.hub.ready[w].is_set()]
            log.error("worker(s) %s not listening within %g s; serving without them", ", ".join(missing),
                      READY_TIMEOUT_S)

    async def _spawn(self, worker: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        self._processes[worker] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.workers.worker", self.directory, worker, stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )

    async def _watch(self, worker: str) -> None:
        while True:
            code = await self._processes[worker].wait()
            if self._stopping:
                return
            log.warning("worker %s exited with status %s; starting it again in %g s", worker, code, RESTART_DELAY_S)
            await asyncio.sleep(RESTART_DELAY_S)
            if self._stopping:
                return
            self.hub.ready[worker] = asyncio.Event()
            await self._spawn(worker)

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values() if p.returncode is None]

    async def stop(self, drain_timeout_s: float) -> None:
        self._stopping = True
        self.hub.draining()
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes.values():
            try:
                async with asyncio.timeout(drain_timeout_s + STOP_GRACE_S):
                    await process.wait()
            except TimeoutError:
                log.warning("worker %d still running %g s after SIGTERM: killed", process.pid,
                            drain_timeout_s + STOP_GRACE_S)
                process.kill()
                await process.wait()
        for watcher in self._watchers:
            watcher.cancel()
        await self.hub.close()
        shutil.rmtree(self.directory, ignore_errors=True)


async def start_workers(pipeline: Pipeline, config: ProxyConfig, raw_server: RawServer, port: int,
                        count: int) -> Workers:
    """`count` worker processes beside this one, on `port`, fed by a hub in a private directory."""
    directory = tempfile.mkdtemp(prefix="endpointd-workers-")  # 0700: only this user reaches the sockets
    hub = WorkerHub(pipeline, config, directory, raw_server, port, pipeline.probe_secret)
    await hub.start()
    workers = Workers(hub, count, directory)
    await workers.start()
    return workers
