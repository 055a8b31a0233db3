"""Serving an aiohttp app on uvloop: the listeners (HTTP or HTTPS, and an optional one for
/metrics alone), client disconnects cancelling handlers, and a SIGTERM drain bounded by
`drain_timeout_s`.

    run(app, config)            # the process: listen, wait for SIGTERM/SIGINT, drain, exit
    listening = await listen(app, config)
    await listening.shutdown(drain_timeout_s)

Not `web.run_app`: on a signal it cancels the task that runs the cleanup, and aiohttp's shutdown
gives up waiting for requests in flight as soon as its task is being cancelled, so streams were
cut at once. Nor aiohttp's own shutdown wait: it waits `shutdown_timeout` for a handler, then as
long again after cancelling it, so a drain took twice the setting. Here the signal only sets an
event; the drain closes the listening sockets and idle connections at once, gives requests in
flight until one deadline, `drain_timeout_s` after the signal, then cuts what is left (their
handlers are cancelled, so pending counts are released) and runs the app's cleanup, bounded by
CLEANUP_GRACE_S. The process exits within drain_timeout_s + CLEANUP_GRACE_S of the signal.

Connections (proxy/management/connections.py): header-read timeout, keep-alive timeout and a cap per
listener. Under TLS the handshake must finish within `header_read_timeout_s` too.

The main listener's protocol is the raw server (proxy/raw/), the one data plane: every request
that is not for an endpoint has its connection handed to the app's aiohttp protocol, under the
same cap and timeouts, and handed back to the raw server at its next request. With `workers` > 1,
`run` starts the worker processes (proxy/workers/) on the same port once this process listens,
and stops them with its own drain.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, replace

import uvloop
from aiohttp import web

from engines.errors import EndpointdError

from .core.cap import ConnectionCap
from .core.config import ProxyConfig, connection_cap, worker_count
from .management.app import PIPELINE, make_metrics_app
from .management.connections import GuardedAppRunner
from .raw.server import RawServer
from .tls import TlsConfigError, server_context
from .workers.spawn import start_workers

log = logging.getLogger("endpointd")
BACKLOG = 4096  # bursts of thousands of clients (a cold start) must not be refused at accept
# After the drain deadline: time for cancelled handlers to finish and for the app's cleanup
# (closing the upstream pool, the store, the controller's tasks), which take milliseconds.
CLEANUP_GRACE_S = 5.0
# aiohttp's own per-connection wait, used only on what is left after the deadline (already cut).
CANCEL_GRACE_S = 1.0
# The metrics listener's own cap: scrapers are few, and a flood of the main port must not lock
# them out (nor they it).
METRICS_MAX_CONNECTIONS = 16


class ListenError(EndpointdError):
    """An address that cannot be listened on; the sentence names it."""


@dataclass
class Listener:
    name: str  # e.g. "https://127.0.0.1:8443", for logs
    runner: GuardedAppRunner
    server: asyncio.AbstractServer
    cap: ConnectionCap
    port: int  # the bound one (the configured one may be 0)
    raw: RawServer | None = None  # the data plane's server (the main listener of an app with a proxy)


class Listening:
    """The listeners of one process, and their bounded shutdown."""

    def __init__(self, listeners: list[Listener]):
        self.listeners = listeners
        self._stopped = False

    @property
    def port(self) -> int:
        return self.listeners[0].port

    @property
    def metrics_port(self) -> int | None:
        return self.listeners[1].port if len(self.listeners) > 1 else None

    async def shutdown(self, drain_timeout_s: float, before_cleanup: Awaitable | None = None) -> bool:
        """`before_cleanup`: awaited once the drain is over, before the app's cleanup (the
        workers' own drain: the control plane must outlive it). False when the app's cleanup
        was cut short."""
        if self._stopped:
            return True
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        for listener in self.listeners:
            listener.server.close()  # no new connections
        busy = 0
        for listener in self.listeners:
            for connection in list(listener.cap.open):
                busy += not connection.close_when_idle()  # idle ones now, busy ones after their response
        log.info("stopping: no new connections; %d in flight get up to %g s to finish", busy, drain_timeout_s)
        caps = [listener.cap for listener in self.listeners]
        if any(cap.open for cap in caps):
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.gather(*(cap.wait_empty() for cap in caps))
            except TimeoutError:
                left = [c for cap in caps for c in cap.open]
                cut = sum(not c.waiting_for_head for c in left)
                if cut:
                    log.warning(
                        "drain_timeout_s=%g passed: cutting %d connection(s) with requests still in flight",
                        drain_timeout_s, cut,
                    )
                for connection in left:
                    connection.force_close()  # handler_cancellation: their handlers are cancelled
        if before_cleanup is not None:
            await before_cleanup
        for listener in self.listeners:
            if listener.raw is not None:
                listener.raw.close()
        try:
            async with asyncio.timeout(CLEANUP_GRACE_S):
                for listener in self.listeners:
                    await listener.runner.cleanup()  # the app's on_shutdown and cleanup_ctx
        except TimeoutError:
            log.warning("the app's cleanup did not finish within %g s; exiting without it", CLEANUP_GRACE_S)
            return False
        return True


async def _listener(app: web.Application, config: ProxyConfig, host: str, port: int, cap_limit: int,
                    context: ssl.SSLContext | None, raw: bool = False, reuse_port: bool = False) -> Listener:
    """`raw`: the data plane on proxy/raw/, everything else handed to the app's aiohttp protocol."""
    name = f"{'https' if context else 'http'}://{host}:{port}"
    cap = ConnectionCap(cap_limit, name)
    runner = GuardedAppRunner(
        app, cap=cap, head_timeout_s=config.header_read_timeout_s, keepalive_timeout_s=config.keepalive_timeout_s,
        shutdown_timeout=CANCEL_GRACE_S,
    )
    await runner.setup()  # the app's startup
    app_server = runner.server
    assert app_server is not None  # made by setup()
    raw_server = None
    if raw:
        raw_server = RawServer(app[PIPELINE], config, cap, "https" if context else "http", app_server)
    try:
        server = await asyncio.get_running_loop().create_server(
            raw_server or app_server, host, port, backlog=BACKLOG, ssl=context, reuse_port=reuse_port or None,
            ssl_handshake_timeout=config.header_read_timeout_s if context else None,
        )
    except BaseException as error:
        if raw_server is not None:
            raw_server.close()
        await runner.cleanup()
        if isinstance(error, OSError):
            raise ListenError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        raise
    bound = server.sockets[0].getsockname()[1]
    if port == 0:
        name = cap.listener = f"{name.rpartition(':')[0]}:{bound}"
    return Listener(name, runner, server, cap, bound, raw_server)


async def listen(app: web.Application, config: ProxyConfig, reuse_port: bool = False) -> Listening:
    """Start `app` on `config.host:config.port` and, when `metrics_port` is set, /metrics alone
    on `config.host:metrics_port`; HTTPS on both when the TLS keys are set. Raises
    TlsConfigError or ListenError with a sentence for the operator. The data plane runs on
    proxy/raw/ when the app has a proxy (add_proxy)."""
    context = server_context(config)
    raw = PIPELINE in app
    main = await _listener(app, config, config.host, config.port, connection_cap(config), context, raw=raw,
                           reuse_port=reuse_port)
    listeners = [main]
    if config.metrics_port:
        try:
            if PIPELINE not in app:
                raise ValueError("metrics_port is set but the app has no proxy (add_proxy) whose metrics it could serve")
            listeners.append(await _listener(
                make_metrics_app(app[PIPELINE]), config, config.host, config.metrics_port, METRICS_MAX_CONNECTIONS,
                context,
            ))
        except BaseException:
            await Listening(listeners).shutdown(0)
            raise
    if PIPELINE in app:
        app[PIPELINE].metrics.watch_connections(
            lambda: [(li.name, len(li.cap.open), li.cap.refused_total) for li in listeners]
        )
    for listener in listeners:
        log.info("listening on %s (at most %d connections)", listener.name, listener.cap.limit)
    return Listening(listeners)


async def _serve(app: web.Application | Awaitable[web.Application], config: ProxyConfig) -> bool:
    if not isinstance(app, web.Application):
        app = await app
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # before any worker starts: a signal meanwhile drains it too
    count = worker_count(config) if PIPELINE in app else 1
    listening = await listen(app, config, reuse_port=count > 1)
    workers = None
    if count > 1:
        main = listening.listeners[0]
        assert main.raw is not None  # an app with a proxy (the only one with workers) listens raw
        workers = await start_workers(app[PIPELINE], config, main.raw, main.port, count - 1)
        log.info("the data plane runs in %d processes (workers = %d): this one and %s", count, config.workers,
                 ", ".join(str(p) for p in workers.pids()))
    # Everything alive now (modules, functions, the app) lives as long as the process: moved
    # out of the collector's reach, a full collection no longer walks ~40k objects and stalls
    # the loop ~14 ms (measured by loadtests/bench_proxy.py under load) but well under 1 ms.
    gc.collect()
    gc.freeze()
    await stop.wait()
    if workers is None:
        clean = await listening.shutdown(config.drain_timeout_s)
    else:  # the workers drain beside this process, from now: no process accepts a connection once the
        # drain has begun; the control plane and the hub stay until the workers are gone
        stopping = asyncio.ensure_future(workers.stop(config.drain_timeout_s))
        clean = await listening.shutdown(config.drain_timeout_s, before_cleanup=stopping)
    log.info("stopped")
    return clean


def run(
    app: web.Application | Awaitable[web.Application],
    config: ProxyConfig | str,
    port: int | None = None,
    drain_timeout_s: float | None = None,
) -> None:
    """Serve `app` with `config` until SIGTERM or SIGINT, then drain and return.

    A TLS setting that cannot be used, or an address that cannot be bound, ends the process with
    one line on stderr and status 2. The old form `run(app, host, port, drain_timeout_s)` still
    works but leaves every other setting (TLS, metrics_port, timeouts, cap) at its default."""
    if isinstance(config, str):
        config = replace(ProxyConfig(), host=config)
        if port is not None:
            config = replace(config, port=port)
        if drain_timeout_s is not None:
            config = replace(config, drain_timeout_s=drain_timeout_s)
    try:
        server_context(config)  # checked before the app is built: a bad TLS setting stops at once
    except TlsConfigError as error:
        if inspect.iscoroutine(app):
            app.close()
        print(f"endpointd: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        clean = uvloop.run(_serve(app, config))
    except (TlsConfigError, ListenError) as error:
        print(f"endpointd: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if not clean:
        # What the cut cleanup did not close (a database connection's thread, an executor's)
        # would keep the process alive for ever: end it here, as the warning said. SQLite's
        # journal keeps what was committed; uncommitted log lines are read again at the next start.
        logging.shutdown()
        os._exit(0)
