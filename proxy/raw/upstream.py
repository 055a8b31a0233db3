"""Connections to replicas for the raw server: one keep-alive pool per replica address, and the
protocol that parses a replica's responses with httptools.

A connection belongs to at most one exchange at a time (`exchange`); between requests it waits
in its address's pool, newest first, and is closed after UPSTREAM_KEEPALIVE_S unused or when the
replica closes it. Its callbacks hand the response to the exchange, which batches what it writes
to the client so each read from the replica gives at most one write to the client.

A connection is handed to an exchange only while it is open: one the replica reset or closed as
it was opened (a crashing engine, a port that still accepts for a dead one) can be lost before
its `connect` task's callback runs; its loss told nobody, and writing on it would raise in a loop
callback (uvloop: "the handler is closed"). `connect` reports it as a failed connection instead:
nothing was sent on it, so the exchange may try another replica.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Protocol

import httptools

log = logging.getLogger("endpointd.proxy")

# Keep-alive to replicas: long enough to outlive gaps between requests, short enough that a
# replica's restart does not leave many dead pooled sockets behind.
UPSTREAM_KEEPALIVE_S = 30.0
# Idle connections kept per replica: enough for the concurrency one replica sees; beyond it a
# returned connection is closed (its descriptor must not be held for nothing).
MAX_IDLE_PER_REPLICA = 1024
SWEEP_INTERVAL_S = 10.0
WRITE_HIGH_WATER = 64 * 1024  # a request body pauses the client beyond this much unsent


class Receiver(Protocol):
    """Who a connection reports its response to while it serves a request (proxy/raw/exchange.py
    Exchange): the head, the body as it comes, its end, or the connection's loss."""

    def upstream_active(self) -> None: ...

    def upstream_full(self, full: bool) -> None: ...

    def response_head(self, status: int, reason_bytes: bytes, raw: list[tuple[bytes, bytes]]) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_done(self, keep_alive: bool) -> None: ...

    def flush(self) -> None: ...

    def upstream_broke(self, reason: str) -> None: ...

    def upstream_lost(self, connection: UpstreamConnection, exc: BaseException | None) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "pool", "address", "transport", "parser", "exchange", "closed", "lost", "idle_since", "reused", "got_bytes",
        "_status_reason", "_headers", "_informational",
    )

    def __init__(self, pool: Pool, address: str):
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport  # set by connection_made, before the pool hands the connection to anyone
        self.parser = httptools.HttpResponseParser(self)  # deleted when the connection is lost
        self.exchange: Receiver | None = None
        self.closed = False
        self.lost: BaseException | None = None  # why the connection was lost, when it was
        self.idle_since = 0.0
        self.reused = False  # served a request before this one: the replica may have closed it meanwhile
        self.got_bytes = False  # any byte of the current response
        self._status_reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._informational = False

    # -- asyncio -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for (from an idle connection): not trusted again
            self.close()
            return
        self.got_bytes = True
        exchange.upstream_active()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            cause = error.__context__
            if cause is not None:  # raised by our own callback: a bug, not the replica's fault
                log.error("the raw server failed on a response from %s", self.address, exc_info=cause)
            if self.exchange is exchange:
                exchange.upstream_broke(f"its response is not valid HTTP ({error or type(error).__name__})")
            else:
                self.close()
            return
        if self.exchange is exchange:
            exchange.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        # The parser's callbacks are this protocol's bound methods, a reference cycle: broken here
        # so a closed connection is freed at once, not left for the cyclic collector.
        del self.parser
        self.pool.forget(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_full(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_full(False)

    # -- httptools -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._status_reason = b""

    def on_status(self, status: bytes) -> None:
        self._status_reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        # An informational answer (103 Early Hints, a stray 100) is not the response: skip it.
        self._informational = 100 <= status < 200 and status != 101
        if not self._informational and self.exchange is not None:
            self.exchange.response_head(status, self._status_reason, self._headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.exchange is not None:
            # Read here: httptools' should_keep_alive() reads False once feed_data() returns.
            self.exchange.response_done(self.parser.should_keep_alive())

    # -- for the exchange ----------------------------------------------------------------------

    def detach(self, reusable: bool) -> None:
        """The exchange is done with this connection: back to the pool, or closed."""
        self.exchange = None
        if reusable and not self.closed:
            self.transport.resume_reading()  # a slow client may have paused it: pooled, it must read
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self.exchange = None
        if not self.closed:
            self.closed = True
            self.transport.abort()  # nothing of ours is left to send on it
        self.pool.forget(self)


class Pool:
    """Idle keep-alive connections per replica address, and new ones when none is idle."""

    def __init__(self, connect_timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._connecting: set[asyncio.Task] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def take_idle(self, address: str) -> UpstreamConnection | None:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()  # the newest: the least likely to have been closed by the replica
            if not connection.closed:
                connection.reused = True
                connection.got_bytes = False
                return connection
        return None

    def connect(self, address: str, done: Callable[[UpstreamConnection | None, BaseException | None], None]) -> asyncio.Task:
        """Open a new connection in a task (the only task on the hot path, and only when no idle
        one is left); `done(connection, None)` or `done(None, error)` when it is settled. The
        caller cancels the returned task when it no longer wants the connection."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._open(address))
        self._connecting.add(task)

        def settled(t: asyncio.Task) -> None:
            self._connecting.discard(t)
            if t.cancelled():
                return
            error = t.exception()
            if error is not None:
                done(None, error)
                return
            connection = t.result()
            if self._closed:
                connection.close()
                done(None, ConnectionError("the proxy is shutting down"))
                return
            if connection.closed:  # lost before it was handed over: nothing was sent on it
                done(None, connection.lost or ConnectionResetError(
                    errno.ECONNRESET, "the replica closed the connection as soon as it was opened"))
                return
            done(connection, None)

        task.add_done_callback(settled)
        return task

    async def _open(self, address: str) -> UpstreamConnection:
        host, _, port = address.rpartition(":")
        async with asyncio.timeout(self._connect_timeout_s):
            _, protocol = await asyncio.get_running_loop().create_connection(
                lambda: UpstreamConnection(self, address), host, int(port))
        return protocol

    def put_back(self, connection: UpstreamConnection) -> None:
        if self._closed:
            connection.close()
            return
        idle = self._idle.setdefault(connection.address, [])
        if len(idle) >= MAX_IDLE_PER_REPLICA:
            connection.close()
            return
        connection.idle_since = self._clock()
        idle.append(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL_S, self._sweep)

    def forget(self, connection: UpstreamConnection) -> None:
        idle = self._idle.get(connection.address)
        if idle and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.address]

    def _sweep(self) -> None:
        self._sweeper = None
        horizon = self._clock() - UPSTREAM_KEEPALIVE_S
        for idle in list(self._idle.values()):
            old = [c for c in idle if c.idle_since <= horizon]
            for connection in old:
                connection.close()
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL_S, self._sweep)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close every idle connection and refuse new ones (at shutdown)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.close()
        self._idle.clear()
        for task in list(self._connecting):
            task.cancel()
