"""Serving an aiohttp app on uvloop: client disconnects cancel handlers, SIGTERM drains."""

from __future__ import annotations

import logging

import uvloop
from aiohttp import web


def run(app: web.Application, host: str, port: int, drain_timeout_s: float) -> None:
    # handler_cancellation: a client that disconnects cancels its handler, which cancels the
    # upstream call and releases its pending count at once (aiohttp leaves it off by default).
    web.run_app(
        app,
        host=host,
        port=port,
        shutdown_timeout=drain_timeout_s,
        handler_cancellation=True,
        access_log=None,  # per-request logging costs throughput; metrics count every request
        print=lambda msg: logging.getLogger("endpointd").info(msg.strip()),
        loop=uvloop.new_event_loop(),
    )
