"""Whatever the order in which replicas open, answer, die and clients leave, every exchange of the
raw server ends once, with an answer, as soon as nothing is left that could answer it: a hypothesis
state machine over the real ClientProtocol, Exchange, Pool and UpstreamConnection. The one seam:
the pool's `_open` gives connections on in-memory transports the machine drives, which behave as
uvloop's (close, abort and a peer's reset schedule `connection_lost`; a write after it raises "the
handler is closed"), and whose opening the machine completes when it chooses, so that a replica
can die between its connection's opening and the moment the pool hands it over."""

from __future__ import annotations

import asyncio
import logging

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from proxy.core.cap import ConnectionCap
from proxy.core.config import ProxyConfig
from proxy.core.control import AuthType, InMemoryControlPlane, Replica, RouteEntry
from proxy.management.app import PIPELINE, make_app
from proxy.raw.client import ClientProtocol
from proxy.raw.exchange import SMALL_BODY_BYTES, Exchange
from proxy.raw.server import RawServer
from proxy.raw.upstream import Pool, UpstreamConnection
from tests.examples import examples

KEY = "acme/e1"
UPLOAD = SMALL_BODY_BYTES + 1000  # streamed to the replica: no retry once any of it is sent
REQUESTS = {
    "get": b"GET /endpoints/acme/e1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "post": b"POST /endpoints/acme/e1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "upload": b"POST /endpoints/acme/e1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % UPLOAD
              + b"x" * (UPLOAD - 10),  # the last 10 bytes come with `upload_ends`
}
RESPONSE = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\ntoken\r\n", b"0\r\n\r\n")


class Transport(asyncio.Transport):
    """An in-memory socket transport with uvloop's order of events."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol):
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.written = b""
        self.closing = False  # close, abort or the peer's death: `connection_lost` is scheduled
        self.lost = False  # `connection_lost` was called: the handle is closed
        self.aborted = False
        self.left = False  # the client went away (before the server closed the connection)
        self.uploaded = False  # a client's: the rest of its upload was sent
        self.undelivered: tuple[BaseException | None] | None = None

    def write(self, data) -> None:
        if self.lost:
            raise RuntimeError(f"unable to perform operation on {self!r}; the handler is closed")
        if not self.closing:
            self.written += bytes(data)

    def die(self, exc: BaseException | None, delivered: bool = True) -> None:
        """Closed; `connection_lost` on the next turn of the loop, or, when not `delivered`, once
        `deliver` is called (a loss the loop has not read yet: writes meanwhile are dropped)."""
        if not self.closing:
            self.closing = True
            if delivered:
                self.loop.call_soon(self._lost, exc)
            else:
                self.undelivered = (exc,)

    def deliver(self) -> None:
        if self.undelivered is not None:
            (exc,), self.undelivered = self.undelivered, None
            self.loop.call_soon(self._lost, exc)

    def _lost(self, exc: BaseException | None) -> None:
        self.protocol.connection_lost(exc)
        self.lost = True

    def abort(self) -> None:
        self.aborted = True
        self.die(None)

    def close(self) -> None:
        self.die(None)

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default


class Opening:
    def __init__(self, connection: UpstreamConnection, future: asyncio.Future):
        self.connection = connection
        self.future = future
        self.response = 0  # pieces of RESPONSE sent


class ScriptedPool(Pool):
    """The real pool, whose connections open when the machine says so."""

    def __init__(self) -> None:
        super().__init__(connect_timeout_s=5.0)
        self.openings: list[Opening] = []

    async def _open(self, address: str) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        connection = UpstreamConnection(self, address)
        connection.connection_made(Transport(loop, connection))
        opening = Opening(connection, loop.create_future())
        self.openings.append(opening)
        await opening.future
        return connection


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ExchangeOrder(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict] = []
        self.loop.set_exception_handler(lambda _, context: self.loop_errors.append(context))
        self.errors = Errors()
        logging.getLogger("endpointd.proxy").addHandler(self.errors)
        control = InMemoryControlPlane()
        control.put(RouteEntry("acme", "e1", AuthType.PUBLIC,
                               replicas=(Replica("r0", "127.0.0.2:1"), Replica("r1", "127.0.0.3:1"))))
        config = ProxyConfig(upstream_response_start_timeout_s=120.0, upstream_idle_timeout_s=300.0)

        async def make() -> RawServer:
            server = RawServer(make_app(config, control)[PIPELINE], config, ConnectionCap(1000, "test"), "http",
                               aiohttp_protocol=asyncio.Protocol)
            server.pool = ScriptedPool()
            return server

        self.server = self.loop.run_until_complete(make())
        self.pool: ScriptedPool = self.server.pool
        self.clients: list[tuple[ClientProtocol, Transport, Exchange, str]] = []

    def teardown(self) -> None:
        logging.getLogger("endpointd.proxy").removeHandler(self.errors)
        if hasattr(self, "loop"):
            self.loop.close()

    def run(self, fn, *args) -> None:
        """`fn(*args)` inside the running loop (as every callback runs), then what it set off."""
        async def inside() -> None:
            fn(*args)

        self.loop.run_until_complete(inside())
        self.settle()

    def settle(self) -> None:
        """Run what the loop has ready until nothing is left (the pending timers are far off)."""
        for _ in range(50):
            self.loop.run_until_complete(asyncio.sleep(0))
            if not self.loop._ready:  # type: ignore[attr-defined]
                return

    # -- clients -------------------------------------------------------------------------------

    @precondition(lambda self: len(self.clients) < 6)
    @rule(kind=st.sampled_from(sorted(REQUESTS)))
    def request(self, kind: str) -> None:
        client = ClientProtocol(self.server)
        transport = Transport(self.loop, client)
        self.run(client.connection_made, transport)
        self.clients.append((client, transport, None, kind))
        self.run(client.data_received, REQUESTS[kind])
        assert len(client.exchanges) == 1 or client.transport is None  # answered at once, or in flight
        self.clients[-1] = (client, transport, client.exchanges[0] if client.exchanges else None, kind)

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def client_leaves(self, data) -> None:
        _, transport, _, _ = data.draw(st.sampled_from(self.clients))
        transport.left = transport.left or not transport.closing
        self.run(transport.die, ConnectionResetError())

    def _uploading(self) -> list:
        return [c for c in self.clients if c[3] == "upload" and not c[1].uploaded]

    @precondition(lambda self: self._uploading())
    @rule(data=st.data())
    def upload_ends(self, data) -> None:
        client, transport, _, _ = data.draw(st.sampled_from(self._uploading()))
        transport.uploaded = True
        if not transport.closing and client.transport is not None:
            self.run(client.data_received, b"y" * 10)

    # -- replicas ------------------------------------------------------------------------------

    def _pending(self) -> list[Opening]:
        return [o for o in self.pool.openings if not o.future.done()]

    @precondition(lambda self: self._pending())
    @rule(data=st.data(), refused=st.booleans())
    def opening_completes(self, data, refused: bool) -> None:
        opening = data.draw(st.sampled_from(self._pending()))
        if refused:
            self.run(opening.future.set_exception, ConnectionRefusedError(111, "Connection refused"))
        else:
            self.run(opening.future.set_result, None)

    @precondition(lambda self: self.pool.openings)
    @rule(data=st.data(), reset=st.booleans(), delivered=st.booleans())
    def replica_dies(self, data, reset: bool, delivered: bool) -> None:
        """At any phase: while opening, with the request sent, mid-response, or idle in the pool;
        its loss told to the proxy at once, or only at a later `losses_delivered`."""
        opening = data.draw(st.sampled_from(self.pool.openings))
        exc = ConnectionResetError(104, "Connection reset by peer") if reset else None
        self.run(opening.connection.transport.die, exc, delivered)

    @precondition(lambda self: any(o.connection.transport.undelivered for o in self.pool.openings))
    @rule()
    def losses_delivered(self) -> None:
        for opening in self.pool.openings:
            self.run(opening.connection.transport.deliver)

    @precondition(lambda self: any(o.connection.exchange is not None and o.response < len(RESPONSE)
                                   for o in self.pool.openings))
    @rule(data=st.data())
    def replica_answers(self, data) -> None:
        opening = data.draw(st.sampled_from([o for o in self.pool.openings
                                             if o.connection.exchange is not None and o.response < len(RESPONSE)]))
        if not opening.connection.transport.closing:
            piece = RESPONSE[opening.response]
            opening.response += 1
            self.run(opening.connection.data_received, piece)

    # -- what must hold ------------------------------------------------------------------------

    def exchanges(self) -> list[tuple[Transport, Exchange]]:
        return [(transport, exchange) for _, transport, exchange, _ in getattr(self, "clients", ()) if exchange]

    @invariant()
    def nothing_fails_in_a_callback(self) -> None:
        if hasattr(self, "loop"):
            assert self.loop_errors == []
            assert [r.getMessage() for r in self.errors.records] == []

    @invariant()
    def an_exchange_is_never_on_a_dead_connection(self) -> None:
        for _, exchange in self.exchanges():
            if exchange.upstream is not None:
                assert not exchange.upstream.closed

    @invariant()
    def an_exchange_nothing_can_answer_has_ended(self) -> None:
        for _, exchange in self.exchanges():
            if exchange.done:
                continue
            waiting_for_a_connection = exchange.task is not None and not exchange.task.done()
            assert exchange.upstream is not None or waiting_for_a_connection, \
                "an exchange with no replica connection and nothing opening one never ended"

    @invariant()
    def each_exchange_ended_once_with_an_answer(self) -> None:
        if not hasattr(self, "server"):
            return
        live = sum(not exchange.done for _, exchange in self.exchanges())
        assert self.server.pipeline.counter.snapshot().pending(KEY) == live  # each uncounted once
        for transport, exchange in self.exchanges():
            if not exchange.done or transport.left:
                continue
            if exchange.response_started:  # complete, or cut: the client's connection is aborted
                complete = transport.written.endswith(b"0\r\n\r\n")
                assert complete or transport.aborted
            else:
                assert transport.written.startswith(b"HTTP/1.1 502 "), transport.written[:40]


ExchangeOrder.TestCase.settings = settings(max_examples=examples(200), stateful_step_count=30, deadline=None)
TestExchangeOrder = ExchangeOrder.TestCase
