"""The main process's side of the workers: a unix socket each worker connects to.

Out: the route table and the rate limits' overrides whole at hello, then every change as it
happens. In: token checks (through the main process's own token cache), rate-limit admissions
(through this process's one limiter, which holds a worker's in-flight counts until it releases
them or its channel closes), wakes (through its ReadinessGate, so an endpoint is woken
once however many workers hold requests for it), each worker's pending counts (added to this
process's counter: the scaling signal and the drain's wait are sums over every process), its
tapped answers (into the analytics tap), and on request its metric families (for /metrics,
which merges them with this process's). Connections the workers pass for the management API
arrive on a unix SEQPACKET socket beside it (handoff.py), one connection per worker."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os

from ..core.config import ProxyConfig
from ..core.control import RouteEntry
from ..core.limits import Override
from ..core.metrics import Family
from ..core.pipeline import Pipeline
from ..core.ratelimit import Lease, Refusal
from ..raw.server import RawServer
from . import channel, codec
from .handoff import Receiver
from .messages import (
    Admit,
    Admitted,
    AskFamilies,
    Counts,
    Families,
    Hello,
    LimitsChanged,
    Ready,
    Release,
    RouteChanged,
    RouteRemoved,
    TappedAnswers,
    ToMain,
    Verified,
    Verify,
    Wake,
    Welcome,
)

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
        self._families: dict[int, asyncio.Future[list[Family]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._receiver: Receiver | None = None
        pipeline.control.subscribe(self._on_change)
        pipeline.limits.subscribe(self._on_limits)
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
        leases: dict[int, Lease] = {}  # this channel's admissions that hold in-flight counts, by Admit id
        try:
            hello = await channel.receive(reader, codec.to_main)
            if not isinstance(hello, Hello):
                raise channel.BrokenPeer(f"{type(hello).__name__} before Hello")
            worker = hello.worker
            entries: dict[str, RouteEntry] = getattr(self.pipeline.control, "entries", {})
            channel.send(writer, Welcome(self.config, self.port, self._probe_secret, tuple(entries.values()),
                                         self.pipeline.metrics.tapped, self.handoff_path,
                                         tuple(self.pipeline.limits.overrides.items())))
            self._writers[worker] = writer
            while True:
                self._dispatch(worker, writer, await channel.receive(reader, codec.to_main), leases)
        except channel.BrokenPeer as error:
            log.warning("worker %s broke its channel: %s", worker, error)
        except channel.ChannelClosed:
            pass
        except Exception:
            log.exception("the channel of worker %s failed", worker)
        finally:
            if worker is not None:
                self._writers.pop(worker, None)
                self.pipeline.counter.drop_remote(worker)
            for lease in leases.values():  # the worker's requests ended with its channel
                lease.release()
            writer.close()

    def _dispatch(self, worker: str, writer: asyncio.StreamWriter, message: ToMain, leases: dict[int, Lease]) -> None:
        match message:
            case Counts(snapshot):
                self.pipeline.counter.set_remote(worker, snapshot)
            case Verify(request, token):
                task = asyncio.get_running_loop().create_task(self._verify(writer, request, token))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case Admit(request, namespace, token):
                outcome = self.pipeline.limiter.admit(namespace, token)
                if isinstance(outcome, Refusal):
                    channel.send(writer, Admitted(request, outcome, False))
                else:
                    if outcome.holds:
                        leases[request] = outcome
                    channel.send(writer, Admitted(request, None, outcome.holds))
            case Release(request):
                lease = leases.pop(request, None)
                if lease is not None:
                    lease.release()
            case Wake(namespace, name):
                entry = self.pipeline.control.lookup(namespace, name)
                if entry is not None:
                    self.pipeline.gate.wake(entry)
            case TappedAnswers(answers):
                self.pipeline.metrics.add_answers(answers)
            case Families(request, families):
                future = self._families.get(request)
                if future is not None and not future.done():
                    future.set_result(families)
            case Ready():
                self.ready.setdefault(worker, asyncio.Event()).set()
            case Hello():
                log.warning("worker %s sent a second Hello", worker)

    async def _verify(self, writer: asyncio.StreamWriter, request: int, token: str) -> None:
        identity = await self.pipeline.tokens.identity(token)  # this process's cache, then the store
        if not writer.is_closing():
            channel.send(writer, Verified(request, identity))

    # -- to every worker ---------------------------------------------------------------------------

    def _on_change(self, entry: RouteEntry) -> None:
        message: RouteChanged | RouteRemoved
        if self.pipeline.control.lookup(entry.namespace, entry.name) is None:
            message = RouteRemoved(entry.namespace, entry.name)
        else:
            message = RouteChanged(entry)
        for writer in self._writers.values():
            channel.send(writer, message)

    def _on_limits(self, namespace: str, override: Override | None) -> None:
        for writer in self._writers.values():
            channel.send(writer, LimitsChanged(namespace, override))

    async def families(self) -> list[list[Family]]:
        """Every connected worker's metric families (those that answer in time)."""
        loop = asyncio.get_running_loop()
        asked = []
        for worker, writer in list(self._writers.items()):
            request = next(self._ids)
            future = self._families[request] = loop.create_future()
            channel.send(writer, AskFamilies(request))
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
