"""A data-plane worker process: `python -m proxy.workers.worker SOCKET_DIR WORKER_ID`, started
by the main process (spawn.py). It connects to the main process's hub, takes its settings,
routes and rate-limit overrides from the hello (the limits' counters stay in the main process), listens on the main process's port (SO_REUSEPORT) with the raw server,
passes connections for anything but the data plane to the main process, and reports its counts.
SIGTERM (or the main process going away) drains it like the main process: no new connections,
requests in flight get `drain_timeout_s`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import replace

import uvloop

from ..management.app import PIPELINE, make_app
from ..server import listen
from . import channel, codec
from .handoff import Sender
from .messages import (
    Admitted,
    AskFamilies,
    Hello,
    LimitsChanged,
    Ready,
    RouteChanged,
    RouteRemoved,
    Verified,
    Welcome,
)
from .remote import RemoteControlPlane, RemoteLimiter, Reporter

log = logging.getLogger("endpointd.proxy")
HANDOFF_FLUSH_S = 5.0  # the main process takes passed connections in milliseconds; it outlives its workers


async def serve(directory: str, worker: str) -> None:
    reader, writer = await asyncio.open_unix_connection(f"{directory}/control")
    channel.send(writer, Hello(worker))
    welcome = await channel.receive(reader, codec.to_worker)
    if not isinstance(welcome, Welcome):
        raise channel.BrokenPeer(f"the main process sent {type(welcome).__name__} before Welcome")
    config = replace(welcome.config, port=welcome.port, metrics_port=0)
    control = RemoteControlPlane(writer)
    for entry in welcome.entries:
        control.put(entry)
    app = make_app(config, control, probe_secret=welcome.probe_secret)
    pipeline = app[PIPELINE]
    for namespace, override in welcome.overrides:
        pipeline.limits.set(namespace, override)
    limiter = RemoteLimiter(writer)
    pipeline.remote_rate = limiter.admit  # the limits' counters are the main process's
    listening = await listen(app, config, reuse_port=True)
    sender = Sender(welcome.handoff)
    raw = listening.listeners[0].raw
    assert raw is not None  # the app has a proxy: its main listener is the raw server
    raw.hand_off = sender
    reporter = Reporter(pipeline, writer)
    reporter.start(welcome.tap)
    channel.send(writer, Ready())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def listen_to_hub() -> None:
        try:
            while True:
                match await channel.receive(reader, codec.to_worker):
                    case RouteChanged(entry):
                        control.put(entry)
                        reporter.counts_now()  # the main process knows our counts as of this route
                    case RouteRemoved(namespace, name):
                        control.remove(namespace, name)
                        reporter.counts_now()
                    case Verified(request, identity):
                        control.verified(request, identity)
                    case Admitted(request, refusal, held):
                        limiter.admitted(request, refusal, held)
                    case LimitsChanged(namespace, override):
                        pipeline.limits.set(namespace, override)
                    case AskFamilies(request):
                        reporter.families(request)
                    case Welcome():
                        log.warning("worker %s: the main process sent a second Welcome", worker)
        except channel.BrokenPeer as error:
            log.warning("worker %s: the main process broke the channel (%s); stopping", worker, error)
            stop.set()
        except channel.ChannelClosed:
            log.warning("worker %s: the main process is gone; stopping", worker)
            stop.set()

    hub = loop.create_task(listen_to_hub())
    await stop.wait()
    await listening.shutdown(config.drain_timeout_s)
    await sender.flushed(HANDOFF_FLUSH_S)  # what this worker passed before its listener closed
    reporter.stop()
    hub.cancel()
    sender.close()
    writer.close()


def main() -> None:
    directory, worker = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[worker {worker}]: %(message)s")
    uvloop.run(serve(directory, worker))


if __name__ == "__main__":
    main()
