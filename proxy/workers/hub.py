"""The main process's side of the workers: a unix socket each worker connects to.

Out: the route table whole at hello, then every change as it happens. In: token checks (through
the main process's own token cache), wakes (through its ReadinessGate, so an endpoint is woken
once however many workers hold requests for it), each worker's pending counts (added to this
process's counter: the scaling signal and the drain's wait are sums over every process), its
tapped answers (into the analytics tap), and on request its metric families (for /metrics,
which merges them with this process's). Connections the workers pass for the management API
arrive on a unix SEQPACKET socket beside it (handoff.py), one connection per worker."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os

from ..core.config import ProxyConfig
from ..core.control import RouteEntry
from ..core.pipeline import Pipeline
from ..raw.server import RawServer
from . import channel, codec
from .handoff import Receiver

log = logging.getLogger("endpointd.proxy")

FAMILIES_TIMEOUT_S = 2.0  # a worker that does not answer a scrape in time is left out of it, with a log line


class WorkerHub:
    def __init__(self, pipeline: Pipeline, config: ProxyConfig, directory: str, raw_server: RawServer, port: int,
                 probe_secret: str | None):
        self.pipeline = pipeline
        self.config = config
        self.directory = directory
        self.port = port
        self._raw = raw_server
        self._probe_secret = probe_secret
        self._writers: dict[str, asyncio.StreamWriter] = {}
        self.ready: dict[str, asyncio.Event] = {}
        self._ids = itertools.count(1)
        self._families: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None
        self._receiver: Receiver | None = None
        pipeline.control.subscribe(self._on_change)
        pipeline.remote_families = self.families

    @property
    def control_path(self) -> str:
        return os.path.join(self.directory, "control")

    @property
    def handoff_path(self) -> str:
        return os.path.join(self.directory, "handoff")

    async def start(self) -> None:
        self._receiver = Receiver(self.handoff_path, self._raw)
        self._server = await asyncio.start_unix_server(self._serve, path=self.control_path)

    def connected(self) -> list[str]:
        return list(self._writers)

    # -- one worker ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker = None
        try:
            hello = await channel.receive(reader)
            worker = str(hello["worker"])
            entries = getattr(self.pipeline.control, "entries", {})
            channel.send(writer, {
                "op": "hello", "config": dataclasses.asdict(self.config), "port": self.port,
                "probe_secret": self._probe_secret, "entries": [codec.entry_out(e) for e in entries.values()],
                "tap": self.pipeline.metrics.tapped, "handoff": self.handoff_path,
            })
            self._writers[worker] = writer
            while True:
                self._dispatch(worker, writer, await channel.receive(reader))
        except channel.ChannelClosed:
            pass
        except Exception:
            log.exception("the channel of worker %s failed", worker)
        finally:
            if worker is not None:
                self._writers.pop(worker, None)
                self.pipeline.counter.drop_remote(worker)
            writer.close()

    def _dispatch(self, worker: str, writer: asyncio.StreamWriter, message: dict) -> None:
        op = message.get("op")
        if op == "counts":
            self.pipeline.counter.set_remote(worker, codec.snapshot_in(message["snapshot"]))
        elif op == "verify":
            task = asyncio.get_running_loop().create_task(self._verify(writer, message["id"], message["token"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif op == "wake":
            entry = self.pipeline.control.lookup(message["namespace"], message["name"])
            if entry is not None:
                self.pipeline.gate.wake(entry)
        elif op == "answers":
            self.pipeline.metrics.add_answers(codec.answers_in(message["data"]))
        elif op == "families":
            future = self._families.get(message["id"])
            if future is not None and not future.done():
                future.set_result(message["families"])
        elif op == "ready":
            self.ready.setdefault(worker, asyncio.Event()).set()
        else:
            log.warning("worker %s sent an unknown message %r", worker, op)

    async def _verify(self, writer: asyncio.StreamWriter, request: int, token: str) -> None:
        identity = await self.pipeline.tokens.identity(token)  # this process's cache, then the store
        if not writer.is_closing():
            channel.send(writer, {"op": "verified", "id": request, "identity": codec.identity_out(identity)})

    # -- to every worker ---------------------------------------------------------------------------

    def _on_change(self, entry: RouteEntry) -> None:
        if self.pipeline.control.lookup(entry.namespace, entry.name) is None:
            message = {"op": "remove", "namespace": entry.namespace, "name": entry.name}
        else:
            message = {"op": "route", "entry": codec.entry_out(entry)}
        for writer in self._writers.values():
            channel.send(writer, message)

    async def families(self) -> list[list]:
        """Every connected worker's metric families (those that answer in time)."""
        loop = asyncio.get_running_loop()
        asked = []
        for worker, writer in list(self._writers.items()):
            request = next(self._ids)
            future = self._families[request] = loop.create_future()
            channel.send(writer, {"op": "metrics", "id": request})
            asked.append((worker, request, future))
        sets = []
        for worker, request, future in asked:
            try:
                async with asyncio.timeout(FAMILIES_TIMEOUT_S):
                    sets.append(await future)
            except TimeoutError:
                log.warning("worker %s sent no metrics within %g s: left out of this scrape", worker, FAMILIES_TIMEOUT_S)
            finally:
                self._families.pop(request, None)
        return sets

    def draining(self) -> None:
        """The server drains: a connection passed from now on serves its request, then closes."""
        if self._receiver is not None:
            self._receiver.draining()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers.values()):
            writer.close()
        if self._receiver is not None:
            self._receiver.close()
        for task in list(self._tasks):
            task.cancel()
