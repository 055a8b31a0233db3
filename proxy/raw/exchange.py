"""One proxied request on the raw server, from its complete head to the end of its response, as
callbacks: no task, future or coroutine on the hot path. A task is made only where something
must wait — a token the cache does not know, a cold start (`Pipeline.admit`), a new upstream
connection (`Pool.connect`) — and it is cancelled when the client leaves.

    head complete ─► route (proxy/core/routing.py, by the client) ─► admit (Pipeline.admit: an
                    admission at once, else a task on the coroutine it returns)
                 ─► [small body of known length: read it whole, 408 past header_read_timeout_s]
                 ─► choose a replica ─► idle pooled connection, or connect (a refused connect is
                    retried once on another replica, proxy/core/forwarding.py may_retry; a pooled one
                    found closed is resent once, may_resend)
                 ─► head + what body there is in one write; the rest streamed with flow control
                 ─► response head, body passed on as it comes (one client write per replica read)
                 ─► done: admission.finish(status) exactly once, the connection back to its pool

Every way out goes through `_end`, which runs once: the pending count's `finally`.

Deadlines: `upstream_response_start_timeout_s` from sending the request
to the response head, `upstream_idle_timeout_s` of silence from the replica (504 before the head;
after it, the client's connection is aborted so it sees a truncated response).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from typing import Protocol

from ..core.control import Replica
from ..core.errors import (
    MalformedBody,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    UpstreamFailed,
    UpstreamTimeout,
)
from ..core.forwarding import (
    REQUEST_ID,
    forwarded_block,
    may_resend,
    may_retry,
    request_id,
    returned_block,
)
from ..core.hold import HEADER as SCALE_UP_TIMEOUT
from ..core.metrics import CLIENT_CLOSED
from ..core.pipeline import PROBE_HEADER, Admission, Pipeline
from ..core.routing import Route, nowhere, route
from . import wire
from .upstream import Pool, UpstreamConnection

SMALL_BODY_BYTES = 64 * 1024  # read whole before sending: one write upstream, and a retry can resend it
BUFFER_BEFORE_PAUSE = 256 * 1024  # body bytes kept while no replica takes them yet; then the client is paused
NO_BODY_STATUSES = frozenset({204, 304})


class After(enum.Enum):
    """What becomes of the client's connection once an exchange has ended."""

    KEEP = "keep"  # the next request, unless the client or the server asked to close
    CLOSE = "close"  # closed once what is written has gone (after a linger if the body is unread)
    ABORT = "abort"  # reset at once: a response cut short must not look complete


class Client(Protocol):
    """The client connection an exchange answers on (proxy/raw/client.py ClientProtocol)."""

    pipeline: Pipeline
    pool: Pool
    loop: asyncio.AbstractEventLoop
    remote: str
    scheme: str
    closing: bool

    def loop_time(self) -> float: ...

    def write(self, data: bytes) -> None: ...

    def pause(self, reason: str) -> None: ...

    def unpause(self, reason: str) -> None: ...

    def exchange_ended(self, exchange: Exchange, after: After) -> None: ...

    def log_cut(self, rid: str, key: str, reason: str) -> None: ...

    def internal_error(self, error: BaseException, exchange: Exchange) -> None: ...


class Exchange:
    __slots__ = (
        "client", "pipeline", "route", "method", "target", "headers", "version", "keep_alive", "body_length", "chunked",
        "host", "rid", "triples", "forwarded", "admission", "task", "upstream", "replica", "tried", "body", "body_seen",
        "body_done", "body_sent", "response_started", "status", "out", "out_chunked", "done", "timer",
        "_start_deadline", "_idle_deadline", "_last_active", "_retried_reused", "expect_continue", "head_only",
        "close_after", "_response_close", "_until_close", "bytes_out",
    )

    def __init__(self, client: Client, found: Route | None, method: str, target: str, headers: dict[str, str],
                 triples: list[tuple[bytes, bytes, bytes]], version: str, keep_alive: bool, body_length: int | None, chunked: bool):
        self.client = client
        self.pipeline = client.pipeline
        self.route = found  # None: routed when it starts
        self.method = method
        self.target = target
        self.headers = headers  # lower-cased name -> first value, for the decisions
        self.version = version
        self.keep_alive = keep_alive
        self.body_length = body_length  # Content-Length, or None
        self.chunked = chunked
        self.host = headers.get("host")
        self.rid = request_id(headers.get("x-request-id"))
        # The caller's headers, until `start` makes them `forwarded`, the block replicas get.
        self.triples: Sequence[tuple[bytes, bytes, bytes]] = triples
        self.forwarded: bytes  # set by `start`, before any replica is reached
        self.admission: Admission | None = None
        self.task: asyncio.Task | None = None
        self.upstream: UpstreamConnection | None = None
        self.replica: Replica | None = None
        self.tried: set[str] = set()
        self.body: list[bytes] = []  # received, not yet sent upstream
        self.body_seen = 0
        self.body_done = not chunked and not body_length
        self.body_sent = False  # any byte of the body went upstream (no retry after that)
        self.response_started = False  # any byte of the response went to the client
        self.status: int | str = CLIENT_CLOSED
        self.out: list[bytes] = []
        self.out_chunked = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = None
        self._start_deadline = 0.0
        self._idle_deadline = 0.0
        self._last_active = 0.0
        self._retried_reused = False
        self.expect_continue = headers.get("expect", "").lower() == "100-continue"
        self.head_only = method == "HEAD"
        self.close_after = not keep_alive  # the client's connection closes after this response
        self._response_close = False
        self._until_close = False  # the replica's body ends where its connection does
        self.bytes_out = 0  # response body bytes passed on to the client (usage: bytes out)

    # -- admission -------------------------------------------------------------------------------

    def start(self) -> None:
        pipeline = self.pipeline
        headers = self.headers
        client = self.client
        triples, self.triples = self.triples, ()
        try:
            self.forwarded = forwarded_block(
                triples, headers.get("connection"), remote=client.remote, scheme=client.scheme,
                host=self.host, prior_forwarded_for=headers.get("x-forwarded-for"), rid=self.rid,
            )
        except ProxyError as error:
            pipeline.refused(error)
            self._refuse(error)
            return
        found = self.route
        if found is None:  # queued behind pipelined requests: routed now, as the route table is now
            found = route(pipeline.control, self.host, self.target) or Route(None, self.target, nowhere(self.target))
        try:
            admitted = pipeline.admit(
                found, authorization=headers.get("authorization"),
                scale_up_timeout=headers.get(SCALE_UP_TIMEOUT.lower()), content_length=self.body_length,
                probe=headers.get(PROBE_HEADER.lower()),
            )
        except ProxyError as error:
            self._refuse(error)
            return
        if isinstance(admitted, Admission):
            self._admitted(admitted)
            return
        self.task = asyncio.get_running_loop().create_task(admitted)
        self.task.add_done_callback(self._admit_settled)

    def _admit_settled(self, task: asyncio.Task) -> None:
        self.task = None
        if task.cancelled():
            return  # the client left: `client_gone` ended the exchange
        error = task.exception()
        if self.done:
            if error is None:
                task.result().finish(CLIENT_CLOSED)
            return
        if isinstance(error, ProxyError):
            self._refuse(error)
        elif error is not None:
            self.client.internal_error(error, self)
        else:
            self._admitted(task.result())

    def _admitted(self, admission: Admission) -> None:
        self.admission = admission
        too_large = self.pipeline.over_limit(self.body_seen)
        if too_large is not None:
            self._fail(too_large)
            return
        if self.expect_continue and not self.body_done and not self.body:
            self.client.write(wire.CONTINUE)
        if self.body_length is not None and self.body_length <= SMALL_BODY_BYTES and not self.body_done:
            timeout_s = self.pipeline.config.header_read_timeout_s
            self.timer = asyncio.get_running_loop().call_later(timeout_s, self._small_body_late, timeout_s)
            return  # `body_complete` sends it
        self._send(admission)

    def _small_body_late(self, timeout_s: float) -> None:
        self.timer = None
        if not self.done and self.upstream is None:
            self._fail(RequestTimeout(
                f"the request body ({self.body_length} bytes announced) did not arrive within {timeout_s:g} s"
            ))

    # -- the request body, from the client -------------------------------------------------------

    def body_received(self, data: bytes) -> None:
        if self.done:
            return
        self.body_seen += len(data)
        too_large = self.pipeline.over_limit(self.body_seen)
        if too_large is not None:
            if self.admission is not None:
                self._fail(too_large)
            return  # before admission: refused once admitted (the count must not be skipped)
        upstream = self.upstream
        if upstream is not None:
            upstream.transport.write(wire.chunk(data) if self.chunked else data)
            self.body_sent = True
            self._last_active = self.client.loop_time()
            return
        self.body.append(data)
        if self.body_seen > BUFFER_BEFORE_PAUSE:
            self.client.pause("body")

    def body_complete(self) -> None:
        if self.done:
            return
        self.body_done = True
        upstream = self.upstream
        if upstream is not None:
            if self.chunked:
                upstream.transport.write(wire.LAST_CHUNK)
            return
        if self.admission is not None and self.timer is not None:  # the small body it waited for
            self.timer.cancel()
            self.timer = None
            self._send(self.admission)

    def body_broken(self, reason: str) -> None:
        """The client's body broke its framing (a bad chunk): a 400, and the connection closes."""
        if not self.done:
            self._fail(MalformedBody(f"the request body is malformed ({reason}); fix how the client frames it"))

    # -- choosing and reaching a replica --------------------------------------------------------

    def _send(self, admission: Admission, refused: UpstreamFailed | None = None) -> None:
        replica = admission.choose(self.tried)
        if replica is None:
            self._fail(refused or UpstreamFailed(f"endpoint {admission.entry.key} has no replica to send to"))
            return
        self.tried.add(replica.id)
        self.replica = replica
        connection = self.client.pool.take_idle(replica.address)
        if connection is not None:
            self._attach(connection, admission, replica)
            return
        self.task = self.client.pool.connect(replica.address, self._connected)

    def _connected(self, connection: UpstreamConnection | None, error: BaseException | None) -> None:
        self.task = None
        if self.done:
            if connection is not None:
                connection.detach(reusable=True)
            return
        admission, replica = self.admission, self.replica
        assert admission is not None and replica is not None  # a connection is asked for by `_send`, after both
        if connection is not None:
            self._attach(connection, admission, replica)
            return
        detail = getattr(error, "strerror", None) or str(error) or type(error).__name__
        if isinstance(error, TimeoutError):
            detail = f"no connection within {self.pipeline.config.upstream_connect_timeout_s:g} s"
        refused = UpstreamFailed(
            f"could not connect to replica {replica.id} of endpoint {admission.entry.key}: {detail}",
            cause="upstream_connect",
        )
        if not may_retry(len(self.tried), self.body_sent):
            self._fail(refused)
            return
        admission.refresh()
        self._send(admission, refused)

    def _attach(self, connection: UpstreamConnection, admission: Admission, replica: Replica) -> None:
        self.upstream = connection
        connection.exchange = self
        head = [f"{self.method} {admission.upstream_path} HTTP/1.1\r\nHost: {replica.address}\r\n".encode(),
                self.forwarded]
        if replica.api_key is not None:
            head.append(f"Authorization: Bearer {replica.api_key}\r\n".encode())
        if self.chunked:
            head.append(b"Transfer-Encoding: chunked\r\n\r\n")
            head += [wire.chunk(b) for b in self.body if b]
            if self.body_done:
                head.append(wire.LAST_CHUNK)
        else:
            if self.body_length is not None:
                head.append(b"Content-Length: %d\r\n" % self.body_length)
            head.append(b"\r\n")
            head += self.body
        connection.transport.write(b"".join(head))
        if not self.body_done:  # streamed: what comes next goes straight upstream, and cannot be resent
            self.body = []
            self.body_sent = True
        # else the whole body is kept: a pooled connection found closed can be given it again
        self.client.unpause("body")
        now = self.client.loop_time()
        config = self.pipeline.config
        self._last_active = now
        self._start_deadline = now + config.upstream_response_start_timeout_s
        self._arm(min(config.upstream_response_start_timeout_s, config.upstream_idle_timeout_s))

    def upstream_full(self, full: bool) -> None:
        if full:
            self.client.pause("upstream")
        else:
            self.client.unpause("upstream")

    # -- deadlines -------------------------------------------------------------------------------

    def _arm(self, delay_s: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.client.loop.call_later(max(delay_s, 0.0), self._deadline)

    def upstream_active(self) -> None:
        self._last_active = self.client.loop_time()

    def _deadline(self) -> None:
        self.timer = None
        if self.done or self.upstream is None:
            return
        now = self.client.loop_time()
        config = self.pipeline.config
        idle_at = self._last_active + config.upstream_idle_timeout_s
        admission, replica = self.admission, self.replica
        assert admission is not None and replica is not None  # a connection is attached after both
        key = admission.entry.key
        if not self.response_started and now >= self._start_deadline:
            self._fail(UpstreamTimeout(
                f"replica {replica.id} of endpoint {key} sent no response headers within "
                f"{config.upstream_response_start_timeout_s:g} s"
            ))
            return
        if now >= idle_at:
            if self.response_started:
                self._cut(502, f"replica {replica.id} sent nothing for {config.upstream_idle_timeout_s:g} s")
            else:
                self._fail(UpstreamTimeout(
                    f"replica {replica.id} of endpoint {key} sent nothing for {config.upstream_idle_timeout_s:g} s"
                ))
            return
        nxt = idle_at if self.response_started else min(idle_at, self._start_deadline)
        self._arm(nxt - now)

    # -- the response, from the replica ----------------------------------------------------------

    def response_head(self, status: int, reason_bytes: bytes, raw: list[tuple[bytes, bytes]]) -> None:
        if self.done:
            return
        self.status = status
        block, length, chunked = returned_block(raw)
        bodiless = self.head_only or status in NO_BODY_STATUSES or status < 200
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, reason_bytes or wire.reason(status).encode()), block,
                 f"{REQUEST_ID}: {self.rid}\r\n".encode()]
        if length is not None and not chunked:
            lines.append(b"Content-Length: %b\r\n" % length)
        elif not bodiless:
            self._until_close = not chunked
            if self.version == "1.1":
                self.out_chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self._response_close = True  # an HTTP/1.0 client: the body ends where the connection does
        if self.close_after or self._response_close or self.client.closing:
            lines.append(b"Connection: close\r\n")
        elif self.version == "1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.out.append(b"".join(lines))
        self.response_started = True
        if self.head_only:
            self.response_done(False)  # the replica's parser would wait for a body that never comes

    def response_body(self, data: bytes) -> None:
        if self.done or self.head_only:
            return
        self.bytes_out += len(data)
        self.out.append(wire.chunk(data) if self.out_chunked else data)

    def flush(self) -> None:
        if self.out:
            self.client.write(b"".join(self.out))
            self.out = []

    def response_done(self, keep_alive: bool) -> None:
        if self.done:
            return
        if self.out_chunked:
            self.out.append(wire.LAST_CHUNK)
        self.flush()
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.detach(reusable=keep_alive and self.body_done and not self.head_only)
        self._end(self.status, After.CLOSE if self._response_close else After.KEEP)

    def upstream_lost(self, connection: UpstreamConnection, exc: BaseException | None) -> None:
        if self.done or connection is not self.upstream:
            return
        self.upstream = None
        if may_resend(reused=connection.reused, got_bytes=connection.got_bytes, response_started=self.response_started,
                      resent=self._retried_reused, body_sent=self.body_sent):
            # A pooled connection the replica had closed as we sent on it: nothing was read, so
            # the request is sent again once, on a new connection to the same replica.
            self._retried_reused = True
            assert self.replica is not None  # a connection is attached after its replica is chosen
            self.task = self.client.pool.connect(self.replica.address, self._connected)
            return
        if self.response_started and self._until_close and exc is None:
            if self.out_chunked:  # a body delimited by the close: it is complete
                self.out.append(wire.LAST_CHUNK)
            self.flush()
            self._end(self.status, After.CLOSE if self._response_close else After.KEEP)
            return
        reason = f"the connection closed ({exc})" if exc else "the connection closed"
        self.upstream_broke(reason)

    def upstream_broke(self, reason: str) -> None:
        if self.done:
            return
        admission, replica = self.admission, self.replica
        assert admission is not None and replica is not None  # told by a connection, attached after both
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.close()
        if self.response_started:
            self.flush()
            self._cut(502, f"replica {replica.id} broke the response: {reason}")
            return
        self._fail(UpstreamFailed(f"replica {replica.id} of endpoint {admission.entry.key} failed: {reason}"))

    # -- the ends --------------------------------------------------------------------------------

    def _refuse(self, error: ProxyError) -> None:
        """A refusal before admission (already counted by the pipeline)."""
        self.status = error.status
        self._answer(error)

    def _fail(self, error: ProxyError) -> None:
        """A failure after admission, before the response started."""
        if self.response_started:
            self._cut(error.status, error.message)
            return
        if self.admission is not None:
            self.admission.refused(error)
        self.status = error.status
        self._answer(error)

    def small_rest(self) -> bool:
        """Whether what is left of the request body is small enough to read and drop."""
        return not self.expect_continue and self.body_length is not None and \
            self.body_length - self.body_seen <= SMALL_BODY_BYTES

    def _answer(self, error: ProxyError) -> None:
        close = (self.close_after or error.closes_connection or isinstance(error, PayloadTooLarge)
                 or (not self.body_done and not self.small_rest()) or self.client.closing)
        self.client.write(wire.error_bytes(error, self.rid, close, self.target))
        self._end(error.status, After.CLOSE if close else After.KEEP)

    def _cut(self, code: int, reason: str | None) -> None:
        """The response had started when it broke: abort, so the client sees it truncated."""
        if reason is not None:
            key = self.admission.entry.key if self.admission else "?"
            self.client.log_cut(self.rid, key, reason)
        self._end(code, After.ABORT)

    def client_gone(self) -> None:
        """The client's connection is lost: cancel what is under way and uncount."""
        if self.done:
            return
        if self.task is not None:
            self.task.cancel()
            self.task = None
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.close()  # the replica sees the disconnect: its handler is cancelled
        self._end(CLIENT_CLOSED, None)

    def _end(self, code: int | str, after: After | None) -> None:
        """`after`: None when the client's connection is gone (nobody to tell)."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.close()
        self.body = []
        self.client.unpause("upstream")
        self.client.unpause("body")
        admission = self.admission
        if admission is not None:
            self.pipeline.metrics.transferred(admission.entry.key, self.body_seen, self.bytes_out, admission.ticket.demand)
            admission.finish(code)
        if after is not None:
            self.client.exchange_ended(self, after)
