"""A data-plane worker process: `python -m proxy.workers.worker SOCKET_DIR WORKER_ID`, started
by the main process (spawn.py). It connects to the main process's hub, takes its settings and
routes from the hello, listens on the main process's port (SO_REUSEPORT) with the raw server,
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

from ..core.config import ProxyConfig
from ..management.app import PIPELINE, make_app
from ..server import listen
from . import channel, codec
from .handoff import Sender
from .remote import RemoteControlPlane, Reporter

log = logging.getLogger("endpointd.proxy")
HANDOFF_FLUSH_S = 5.0  # the main process takes passed connections in milliseconds; it outlives its workers


async def serve(directory: str, worker: str) -> None:
    reader, writer = await asyncio.open_unix_connection(f"{directory}/control")
    channel.send(writer, {"op": "hello", "worker": worker})
    hello = await channel.receive(reader)
    config = replace(ProxyConfig(**hello["config"]), port=hello["port"], metrics_port=0)
    control = RemoteControlPlane(writer)
    for data in hello["entries"]:
        control.put(codec.entry_in(data))
    app = make_app(config, control, probe_secret=hello["probe_secret"])
    pipeline = app[PIPELINE]
    listening = await listen(app, config, reuse_port=True)
    sender = Sender(hello["handoff"])
    listening.listeners[0].raw.hand_off = sender
    reporter = Reporter(pipeline, writer)
    reporter.start(hello["tap"])
    channel.send(writer, {"op": "ready"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def listen_to_hub() -> None:
        try:
            while True:
                message = await channel.receive(reader)
                op = message.get("op")
                if op == "route":
                    control.put(codec.entry_in(message["entry"]))
                    reporter.counts_now()  # the main process knows our counts as of this route
                elif op == "remove":
                    control.remove(message["namespace"], message["name"])
                    reporter.counts_now()
                elif op == "verified":
                    control.verified(message["id"], codec.identity_in(message["identity"]))
                elif op == "metrics":
                    reporter.families(message["id"])
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
