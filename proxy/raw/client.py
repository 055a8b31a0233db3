"""One client connection on the raw server: httptools parses the requests; the data plane
(`/endpoints/...` and Host-routed endpoints) is proxied here by an `Exchange` per request, and a
connection whose request is for anything else (the management API, the dashboard, /metrics) is
handed, before its body is read, byte for byte to the app's aiohttp protocol in this process
(`transport.set_protocol`): the client address, TLS and the connection cap carry over.

The same guards as aiohttp's connections have (proxy/management/connections.py), with the same sentences:
- the cap (`ConnectionCap`), counted from `connection_made`; past it a ready-made 503 and close;
- the head-read deadline, armed at the connection's opening and at the first byte of each later
  request, cancelled by a complete head: silent connections and slowloris are closed;
- the keep-alive timeout after each response;
- what the parser refuses is a JSON 400 (431 for a head over the size limits), then close.

A hand-off needs the request's bytes from its first one: it is possible for a connection's first
request, and for a later one that starts a read (a client waiting for each response, as every
HTTP/1.1 client does). A management request pipelined behind another is refused (400, close).
Requests pipelined on the data plane are queued and answered in order.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections import deque
from typing import Protocol

import httptools

from ..core.cap import ConnectionCap
from ..core.errors import (
    MAX_HEADERS,
    MAX_LINE_BYTES,
    ProxyError,
    chunked_http10,
    head_too_large,
    not_a_path,
    not_http,
    pipelined,
)
from ..core.pipeline import Pipeline
from ..core.routing import route
from . import wire
from .exchange import After, Exchange
from .upstream import Pool

log = logging.getLogger("endpointd.proxy")

# The whole head, request line and every header line: what MAX_HEADERS lines of MAX_LINE_BYTES
# come to. Bounds what httptools accumulates for one header before it calls back.
MAX_HEAD_BYTES = MAX_LINE_BYTES * (MAX_HEADERS + 1)
WRITE_HIGH_WATER = 64 * 1024  # a response pauses its replica beyond this much unsent to the client
# After an answer that closes the connection while the client is still sending its body: reading
# and dropping what comes for this long before the close, so the kernel does not reset the
# connection (unread bytes at close) and destroy the answer before the client reads it.
LINGER_S = 2.0
TOO_LARGE = head_too_large()


# The request headers the decisions read (auth, routing, holds, probes, ids, framing, X-Forwarded-*).
_READ = frozenset({
    b"host", b"authorization", b"x-scale-up-timeout", b"x-request-id", b"x-endpointd-probe", b"connection",
    b"x-forwarded-for", b"expect",
})
_TARGET = re.compile(rb"[\x21-\x7e]*").fullmatch  # printable ASCII, no space: what a request target may hold


class _HandedOff(Exception):
    """Raised inside a parser callback to stop parsing: the connection now belongs to aiohttp."""


class Listener(Protocol):
    """What the connections of one listener share (proxy/raw/server.py RawServer)."""

    pipeline: Pipeline
    pool: Pool
    scheme: str
    cap: ConnectionCap
    loop: asyncio.AbstractEventLoop
    head_timeout_s: float
    keepalive_timeout_s: float

    def hand_off(self, transport: asyncio.Transport, data: bytes) -> None: ...


class ClientProtocol(asyncio.Protocol):
    def __init__(self, server: Listener):
        self.server = server
        self.pipeline: Pipeline = server.pipeline
        self.pool: Pool = server.pool
        self.scheme = server.scheme
        self.cap: ConnectionCap = server.cap
        self.loop = server.loop
        self.loop_time = self.loop.time
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        # Its callbacks are this protocol's bound methods, a reference cycle: dropped when the
        # connection ends or is handed off, so that the connection is freed at once, not left to
        # the cyclic collector (a full collection walking thousands of closed connections stalled
        # the loop for ~100 ms: README, "The SSE delay's tail"). None: no byte is parsed any more.
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.exchanges: deque[Exchange | _Refusal] = deque()  # in order; the first is being answered
        self.closing = False  # no request after the current one (a drain, or an error)
        self._admitted = False
        # One lazy timer: `_deadline` (loop time) is what counts; the timer handle may be set for
        # an earlier moment and then re-arms itself for the rest, so that moving a deadline later
        # (every request of a keep-alive connection) costs no timer call.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the handle fires
        self._deadline = 0.0
        self._timer_kind = ""  # "head", "keepalive", "discard" or "linger"; "" when none
        self._lingering = False
        self._paused: set[str] = set()
        self._writing_paused = False
        # the request being parsed
        self._in_message = False
        self._in_head = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._current: Exchange | None = None
        self._discarding = False  # reading the rest of a body whose request was already answered
        # Bytes of that rest still to come, and where in the current read it ends: the next request,
        # if the same read brings it (the client sent it once it had the answer), starts there.
        self._discard_left = 0
        self._discard_end: int | None = None
        self._boundary_at = 0  # where in the current read the next request starts
        self._buffer: list[bytes] | None = None  # this request's bytes from its first, for a hand-off
        self._at_boundary = False  # the read being parsed started where a request starts
        self._chunk: bytes = b""

    # -- the cap and the connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.cap.admit(self):
            self.parser = None  # the cycle (see __init__): never parsed
            transport.write(self.cap.refusal_bytes)  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._arm(self.server.head_timeout_s, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self.parser = None  # the cycle (see __init__); no byte is parsed after the loss
        if not self._admitted:
            return
        self._admitted = False
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.cap.release(self)
        self.transport = None
        for exchange in list(self.exchanges):
            exchange.client_gone()
        self.exchanges.clear()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.exchanges:
            upstream = self.exchanges[0].upstream
            if upstream is not None and upstream.transport is not None:
                upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.exchanges:
            upstream = self.exchanges[0].upstream
            if upstream is not None and upstream.transport is not None and not upstream.closed:
                upstream.transport.resume_reading()

    def pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def unpause(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self.transport is not None:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    # -- for the drain (proxy/server.py Listening.shutdown) ------------------------------------

    @property
    def waiting_for_head(self) -> bool:
        return not self.exchanges

    def close_when_idle(self) -> bool:
        if self.waiting_for_head:
            self.force_close()
            return True
        self.closing = True
        return False

    def force_close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- timers ------------------------------------------------------------------------------------

    def _arm(self, delay_s: float, kind: str) -> None:
        deadline = self.loop_time() + delay_s
        self._deadline = deadline
        self._timer_kind = kind
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first and re-arms for the rest
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._expired)

    def _disarm(self) -> None:
        self._timer_kind = ""  # the handle, if any, fires and finds nothing to do

    def _expired(self) -> None:
        """The head deadline, the keep-alive timeout, the end of a discard or of a linger: only a
        connection with no request under way is closed."""
        self._timer = None
        kind = self._timer_kind
        if not kind:
            return
        if self._deadline > self.loop_time():
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._expired)
            return
        self._timer_kind = ""
        if self.transport is None:
            return
        if kind in ("discard", "linger") or not self.exchanges:
            if kind == "head":
                log.debug("closing a client connection that sent no complete request head in time")
            self.transport.abort()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close once the client has stopped sending (or after LINGER_S): the answer written
        just now must reach it, not be destroyed by a reset."""
        self._lingering = True
        self.closing = True
        self.unpause("body")
        self.unpause("upstream")
        self.unpause("pipelined")
        self.unpause("broken")
        if transport.can_write_eof():
            transport.write_eof()
        self._arm(LINGER_S, "linger")

    def eof_received(self) -> bool | None:
        if self._lingering and self.transport is not None:
            self.transport.close()
        return None

    # -- reading -----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        parser = self.parser  # None unless admitted (and neither lost nor handed off)
        if parser is None or self._lingering:
            return
        if not self._in_message:
            if self._timer_kind != "head" and not self.exchanges:
                self._arm(self.server.head_timeout_s, "head")  # the first byte of a request: the head deadline
            self._at_boundary = True
        elif self._in_head:
            if self._buffer is not None:
                self._buffer.append(data)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._parse_failed(TOO_LARGE)
                return
        self._chunk = data
        self._discard_end = self._discard_left if self._discarding else None
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Refused):
                self._parse_failed(cause.error)
            elif not isinstance(cause, _HandedOff):
                self._bug(cause or error)
            del cause  # its traceback holds this frame: a cycle (a collection's work) if kept
        except httptools.HttpParserUpgrade:
            # An Upgrade request (not proxied: Upgrade is hop-by-hop): its response closes the connection.
            self.closing = True
            if self.exchanges:
                self.exchanges[-1].close_after = True
            self.pause("upgrade")
        except httptools.HttpParserError as error:
            if self._in_message and self._current is not None and not self._in_head:
                self._current.body_broken(str(error) or type(error).__name__)
                self.closing = True
                self.pause("broken")
            else:
                self._parse_failed(not_http(str(error).strip().rstrip(":")))
        finally:
            self._chunk = b""

    def _bug(self, error: BaseException) -> None:
        log.error("the raw server failed on a request from %s", self.remote, exc_info=error)
        self.closing = True
        if self.exchanges:
            for exchange in list(self.exchanges):
                exchange.client_gone()
        if self.transport is not None:
            self.transport.abort()

    def _parse_failed(self, error: ProxyError) -> None:
        """What cannot be parsed as a request: a JSON answer if none is under way, then close."""
        self.closing = True
        self.pause("broken")
        log.debug("refused a malformed request from %s: %s", self.remote, error.message)
        self.pipeline.refused(error)
        if self.exchanges:  # answered in its turn, after the responses under way; then close
            self._current = None
            self.exchanges.append(_Refusal(self, error))
            return
        if self.transport is not None:
            self.transport.write(wire.error_bytes(error, None, True))
            self._linger(self.transport)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._url = b""
        self._headers = []
        start, self._boundary_at = self._boundary_at, 0
        self._head_bytes = len(self._chunk) - start
        self._buffer = [self._chunk[start:] if start else self._chunk] if self._at_boundary else None
        self._at_boundary = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE_BYTES:
            raise _Refused(TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a chunked body's trailer: not forwarded
        if len(name) + len(value) + 2 > MAX_LINE_BYTES or len(self._headers) >= MAX_HEADERS:
            raise _Refused(TOO_LARGE)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        buffer, self._buffer = self._buffer, None
        self._head_done(buffer)

    def _head_done(self, buffer: list[bytes] | None) -> None:
        parser = self.parser
        assert parser is not None  # a parser callback: parsing runs only while the parser is there
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii", "replace")
        url = self._url
        if self._timer_kind == "head":
            self._disarm()
        if _TARGET(url) is None:
            raise _Refused(not_http("invalid character in the request target"))
        target = url.decode("ascii")
        if target[:1] != "/":
            raise _Refused(not_a_path(target))
        headers: dict[str, str] = {}  # what the decisions read, decoded (surrogates for bytes that are not UTF-8)
        triples: list[tuple[bytes, bytes, bytes]] = []  # everything else stays bytes, as it came
        chunked = False
        length: int | None = None
        for raw_name, raw_value in self._headers:
            lower = raw_name.lower()
            if lower == b"content-length":
                length = int(raw_value)  # llhttp checked it is one number
                continue
            if lower == b"transfer-encoding":
                chunked = True
            elif lower in _READ:
                key = lower.decode()
                value = raw_value.decode("utf-8", "surrogateescape")
                if key not in headers:
                    headers[key] = value
                elif key == "connection":
                    headers[key] += ", " + value
            triples.append((raw_name, lower, raw_value))
        if chunked and version == "1.0":
            raise _Refused(chunked_http10())
        fragment = target.find("#")  # never sent by a client in the wild; not sent on
        if fragment != -1:
            target = target[:fragment]
        found = route(self.pipeline.control, headers.get("host"), target)
        if found is None:  # not the data plane
            if buffer is not None and not self.exchanges and not self._discarding:
                self._hand_off(buffer)
            raise _Refused(pipelined("a request for this server's own routes", "another request"))
        connection = headers.get("connection", "").lower()
        tokens = {t.strip() for t in connection.split(",")} if connection else set()
        keep_alive = ("close" not in tokens) if version == "1.1" else ("keep-alive" in tokens)
        # Routed now when it starts now; one queued behind others is routed when it starts.
        exchange = Exchange(self, None if self.exchanges else found, method, target, headers, triples, version,
                            keep_alive and not self.closing, length, chunked)
        self._current = exchange
        self.exchanges.append(exchange)
        if len(self.exchanges) == 1:
            exchange.start()
        elif len(self.exchanges) > 1:
            self.pause("pipelined")  # answered in order: read no further meanwhile

    def on_body(self, body: bytes) -> None:
        if self._discarding:
            self._discard_left -= len(body)
            return
        current = self._current
        if current is not None:
            current.body_received(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._in_head = False
        if self._discarding:
            self._discarding = False
            end = self._discard_end
            if end is not None and 0 <= end <= len(self._chunk):
                # The dropped rest ended inside this read (a Content-Length body: its length is
                # exact): what follows is the client's next request, from its first byte.
                self._at_boundary, self._boundary_at = True, end
            self._after_response()
            return
        current = self._current
        self._current = None
        if current is not None:
            current.body_complete()

    # -- the end of a response ------------------------------------------------------------------

    def exchange_ended(self, exchange: Exchange | _Refusal, after: After) -> None:
        if self.transport is None:
            return
        if after is After.ABORT:
            self.transport.abort()
            return
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.popleft()
        elif exchange in self.exchanges:
            self.exchanges.remove(exchange)
        unread = self._current if self._current is exchange else None  # answered before its body was all read
        if unread is not None:
            self._current = None
        if after is After.CLOSE or exchange.close_after or (self.closing and not self.exchanges) \
                or (unread is not None and not unread.small_rest()):
            self.closing = True
            if unread is not None or self._in_message:
                self._linger(self.transport)
            else:
                self.transport.close()  # after what is buffered is written
            return
        if unread is not None:
            # Read the small rest of the body and drop it, then serve the next request.
            self._discarding = True
            self._discard_left = (unread.body_length or 0) - unread.body_seen
            self._arm(self.server.head_timeout_s, "discard")
            return
        self._after_response()

    def _after_response(self) -> None:
        if self.transport is None:
            return
        self.unpause("pipelined")
        if self.exchanges:
            nxt = self.exchanges[0]
            nxt.start()
            return
        self._arm(self.server.keepalive_timeout_s, "keepalive")

    # -- the hand-off to aiohttp ------------------------------------------------------------------

    def _hand_off(self, buffer: list[bytes]) -> None:
        transport = self.transport
        assert transport is not None  # called from a parser callback: parsing runs only while connected
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._admitted = False
        self.cap.release(self)  # whoever takes the connection counts it
        self.transport = None
        self.parser = None  # the cycle (see __init__): this protocol is done; feed_data holds the parser until it returns
        if self._paused:
            self._paused.clear()
            transport.resume_reading()
        self.server.hand_off(transport, b"".join(buffer))
        raise _HandedOff

    # -- for the exchange ---------------------------------------------------------------------------

    def log_cut(self, rid: str, key: str, reason: str) -> None:
        log.warning("request %s to %s cut: %s", rid, key, reason)

    def internal_error(self, error: BaseException, exchange: Exchange) -> None:
        log.error("the raw server failed on a request", exc_info=error)
        failure = ProxyError("the server failed on this request; its log says why")
        exchange._fail(failure)


class _Refusal:
    """A refusal queued behind pipelined requests: written in its turn, then the connection closes."""

    upstream = None
    close_after = True

    def __init__(self, client: ClientProtocol, error: ProxyError):
        self.client = client
        self.error = error

    def start(self) -> None:
        self.client.write(wire.error_bytes(self.error, None, True))
        self.client.exchange_ended(self, After.CLOSE)

    def client_gone(self) -> None:
        pass


class _Refused(_HandedOff):
    """A head refused inside a callback: answered, and the connection closes."""

    def __init__(self, error: ProxyError):
        super().__init__(error.message)
        self.error = error

