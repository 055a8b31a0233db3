"""Client connections under aiohttp's server: a deadline for each request head, the keep-alive
timeout, a cap on open connections, and JSON answers for what the HTTP parser refuses.

aiohttp's `web.Server` is the protocol factory a listening socket calls for every connection; it
makes one `RequestHandler` (the asyncio protocol that parses requests and runs handlers) each.
`GuardedServer` makes a `ClientConnection` instead, a RequestHandler that adds:

- **the cap** (`ConnectionCap`, proxy/core/cap.py): counted in `connection_made`; past the limit
  a connection gets a ready-made 503 and is closed before aiohttp ever sees it. Under TLS the count starts once the
  handshake is done; the handshake itself is bounded by `header_read_timeout_s` (server.py).
- **the head-read deadline**: a timer armed when the connection opens and again at the first byte
  of each later request; cancelled when the parser has a whole request head. If it fires while
  the connection still waits for a head, the connection is closed. That closes both a connection
  that never sends anything and a slowloris that sends a header byte now and then.
- **keep-alive**: aiohttp's own `keepalive_timeout` (armed at connection start and after each
  response, closing a connection that still waits for a request), set from the config instead
  of aiohttp's default of 3630 s.
- **errors as JSON**: what the parser refuses (smuggling attempts, obs-fold, oversized heads) is
  answered `{"error": ...}` with X-Error-Message, 431 for a head over the size limits, and is
  logged as one debug line, never a traceback; a request target that is not a path ('*', an
  absolute URL) is a 400 before any route sees it.

- **the hand-back**: a connection the raw server handed over (its request was not for the data
  plane) goes back to it when the first bytes of its next request arrive, so every request for an
  endpoint is served by the raw server; a request pipelined behind one of aiohttp's stays here.

It uses a few of RequestHandler's attributes that are not public API (`_request_count`,
`_request_in_progress`, `_messages`, `_current_request`, `_lingering_time`, `_close`,
`_force_close`, `_upgraded`): a test in
tests/unit/test_proxy_connections.py fails if an aiohttp release renames them. Also a fix for an
aiohttp gap: a body that breaks its framing mid-stream ends the handler's body with the error
(a 400 at once) instead of leaving it waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11 as HTTP11
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from ..core.cap import ConnectionCap
from ..core.errors import (
    MAX_HEADERS,
    MAX_LINE_BYTES,
    ProxyError,
    chunked_http10,
    head_too_large,
    not_a_path,
    not_http,
    to_http,
)

log = logging.getLogger("endpointd.proxy")


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _parse_error(exc: BaseException | None) -> ProxyError:
    """The refusal for what aiohttp's HTTP parser could not accept."""
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, HttpProcessingError) and "too many headers" in exc.message.lower()
    ):
        return head_too_large()
    reason = ""
    if isinstance(exc, HttpProcessingError) and exc.message:
        reason = exc.message.strip().splitlines()[0].rstrip(":")
    return not_http(reason)


class ClientConnection(RequestHandler):
    """One client connection: aiohttp's protocol, with the cap, the head deadline and JSON errors."""

    __slots__ = ("_cap", "_head_timeout_s", "_head_timer", "_admitted", "hand_back", "_last_body")

    def __init__(self, manager: GuardedServer, *, cap: ConnectionCap, head_timeout_s: float, **kwargs):
        super().__init__(manager, **kwargs)
        self._cap = cap
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._admitted = False
        # Set by the raw server that handed this connection over (proxy/raw/server.py): given the
        # transport and the first bytes of the connection's next request, it takes it back.
        self.hand_back: Callable[[asyncio.Transport, bytes], None] | None = None
        self._last_body: StreamReader | None = None  # the body stream of the last request parsed

    # -- the cap ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._cap.admit(self):
            # Closed before aiohttp knows of it: no task, no parser work, the descriptor freed now.
            transport.write(self._cap.refusal_bytes)  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm()  # the first request's head must arrive within the deadline

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._disarm()
        self._cap.release(self)
        super().connection_lost(exc)

    # -- the head deadline -----------------------------------------------------------------

    @property
    def waiting_for_head(self) -> bool:
        """Handling no request and holding none parsed: idle, or in the middle of a head."""
        return not self._request_in_progress and not self._messages

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        hand_back, transport = self.hand_back, self.transport
        if hand_back is not None and transport is not None and self._between_requests():
            self._give_back(hand_back, transport, data)
            return
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._last_body = self._messages[-1][1] if self._messages else None
            self._disarm()  # a whole head arrived (or one the parser refused: answered, then closed)
            self._end_broken_body()
        elif self._head_timer is None and self.waiting_for_head:
            self._arm()  # the first bytes of the next request

    def _end_broken_body(self) -> None:
        """aiohttp's parser, failing in the middle of a body (a bad chunk size, say), queues its
        error as the next message and leaves the body of the request being handled waiting for
        bytes that will never come: the handler would hang until the replica's timeouts. End
        that body with the error instead, so the handler answers 400 at once."""
        request = self._current_request
        if request is None or not self._messages:
            return
        exc = getattr(self._messages[-1][0], "exc", None)  # an aiohttp _ErrInfo
        if isinstance(exc, HttpProcessingError) and not request.content.is_eof():
            reason = exc.message.strip().splitlines()[0].rstrip(":") if exc.message else type(exc).__name__
            request.content.set_exception(RequestPayloadError(reason))
            self.end_after_response()  # a lingering read of the rest would meet the same error

    def _between_requests(self) -> bool:
        """Whether the connection (open) is between requests: one served, its response written and
        its body read to the end, nothing parsed of a next one, and not closing."""
        return (
            self._request_count > 0 and not self._request_in_progress and not self._messages
            and not self._close and not self._force_close and not self._upgraded
            and (self._last_body is None or self._last_body.is_eof())
        )

    def _give_back(self, hand_back: Callable[[asyncio.Transport, bytes], None], transport: asyncio.Transport,
                   data: bytes) -> None:
        """The connection's next request begins with `data`: the connection goes back to the raw
        server, open, with the cap's count passed on; aiohttp's handler for it ends."""
        self.transport = None  # aiohttp's teardown below must leave the connection open
        self.connection_lost(None)
        hand_back(transport, data)

    def end_after_response(self) -> None:
        """Close the connection once the current response is sent, without aiohttp's lingering
        read of an unread body: what is left on it cannot be read as a next request."""
        self._lingering_time = 0.0
        self._close = True

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_deadline)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self.waiting_for_head and self.transport is not None:
            log.debug("closing a connection that sent no complete request head within %g s", self._head_timeout_s)
            self.force_close()

    # -- shutdown --------------------------------------------------------------------------

    def close_when_idle(self) -> bool:
        """Close now if no request is in progress (True); else after the current response."""
        if self.waiting_for_head:
            self.force_close()
            return True
        self._close = True  # aiohttp's flag: no further request on this connection
        return False

    # -- errors as JSON --------------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            # A bug of ours (or a handler's unhandled timeout, 504): its traceback goes to the
            # log, never to the caller.
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            error: ProxyError = ProxyError("the server failed on this request; its log says why")
            error.status = status
        else:
            error = _parse_error(exc)
            log.debug("refused a malformed request from %s: %s (%s)", request.remote, error.message, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; no error can be sent any more")
        code, headers, body = to_http(error)
        response = web.Response(status=code, headers=headers, body=body)
        response.force_close()
        return response


def screened(handler: Handler) -> Handler:
    """Refuse, with a JSON 400 before any route sees them, what the parser lets through but this
    server will not serve: a target that is not a path ('*', an absolute URL, which aiohttp would
    route by its path with the Host taken from it), and Transfer-Encoding in an HTTP/1.0 request
    (RFC 9112 §6.1: its framing must be treated as faulty)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path[:1] == "/" and (request.version >= HTTP11 or "Transfer-Encoding" not in request.headers):
            return await handler(request)
        error = not_a_path(request.raw_path) if request.raw_path[:1] != "/" else chunked_http10()
        code, headers, body = to_http(error)
        response = web.Response(status=code, headers=headers, body=body)
        response.force_close()
        return response

    return handle


class GuardedServer(web.Server):
    """aiohttp's Server, making a ClientConnection per connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        cap: ConnectionCap,
        head_timeout_s: float,
        keepalive_timeout_s: float,
        request_factory=None,
        handler_cancellation: bool = True,
    ):
        super().__init__(
            screened(handler), request_factory=request_factory, handler_cancellation=handler_cancellation
        )
        self.cap = cap
        self._head_timeout_s = head_timeout_s
        self._connection_kwargs = {
            "keepalive_timeout": keepalive_timeout_s,
            "access_log": None,
            "max_line_size": MAX_LINE_BYTES,
            "max_field_size": MAX_LINE_BYTES,
            "max_headers": MAX_HEADERS,
        }
        self._connection_loop = asyncio.get_running_loop()

    def __call__(self) -> ClientConnection:
        return ClientConnection(
            self, loop=self._connection_loop, cap=self.cap, head_timeout_s=self._head_timeout_s,
            **self._connection_kwargs,
        )


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose server is a GuardedServer; the app's startup and cleanup as usual."""

    def __init__(self, app: web.Application, *, cap: ConnectionCap, head_timeout_s: float, keepalive_timeout_s: float,
                 shutdown_timeout: float):
        super().__init__(app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout)
        self._cap = cap
        self._head_timeout_s = head_timeout_s
        self._keepalive_timeout_s = keepalive_timeout_s

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup, gives its handler and request factory
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory, cap=self._cap,
                             head_timeout_s=self._head_timeout_s, keepalive_timeout_s=self._keepalive_timeout_s)
