"""Serving an aiohttp app on uvloop: client disconnects cancel handlers, SIGTERM drains.

Not `web.run_app`: on a signal it cancels the task that runs the cleanup, and aiohttp's shutdown
gives up waiting for requests in flight as soon as its task is being cancelled, so streams were
cut at once. Here the signal only sets an event; cleanup runs in an uncancelled task and waits
up to `drain_timeout_s` for requests in flight to finish.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable

import uvloop
from aiohttp import web

log = logging.getLogger("endpointd")
BACKLOG = 4096  # bursts of thousands of clients (a cold start) must not be refused at accept


async def _serve(app: web.Application | Awaitable[web.Application], host: str, port: int, drain_timeout_s: float) -> None:
    if not isinstance(app, web.Application):
        app = await app
    # handler_cancellation: a client that disconnects cancels its handler, which cancels the
    # upstream call and releases its pending count at once (aiohttp leaves it off by default).
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=drain_timeout_s, access_log=None, handle_signals=False
    )
    await runner.setup()
    # Everything alive now (modules, functions, the app) lives as long as the process: moved
    # out of the collector's reach, a full collection no longer walks ~40k objects and stalls
    # the loop ~14 ms (measured by loadtests/bench_proxy.py under load) but well under 1 ms.
    gc.collect()
    gc.freeze()
    try:
        await web.TCPSite(runner, host, port, backlog=BACKLOG).start()
        log.info("listening on http://%s:%d", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: no new connections; waiting up to %g s for requests in flight", drain_timeout_s)
    finally:
        await runner.cleanup()
    log.info("stopped")


def run(app: web.Application | Awaitable[web.Application], host: str, port: int, drain_timeout_s: float) -> None:
    uvloop.run(_serve(app, host, port, drain_timeout_s))
