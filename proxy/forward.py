"""Forwarding over aiohttp: pooled upstream connections, bodies streamed both ways, SSE flushed
event by event, the client's disconnect cancelling the upstream call. A replica gets two
deadlines: `upstream_response_start_timeout_s` to send its response headers, then
`upstream_idle_timeout_s` between bytes; missing either is a 504.

The path after the endpoint prefix is sent as it came (the URL is marked already encoded, so yarl
neither decodes `%2f`/`%2e%2e` nor removes dot segments); the only changes: an empty query (`/x?`)
is sent as `/x`, and a fragment (`#...`, which no client should send) is dropped. A header value
that is not valid UTF-8 cannot be forwarded as it came (aiohttp's client would send it empty), so
it is refused with a 400. A replica with an API key gets `Authorization: Bearer <key>`; the
caller's own Authorization is never forwarded.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from .errors import (
    BadRequest,
    MalformedBody,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamFailed,
    UpstreamTimeout,
    shown,
)
from .metrics import CLIENT_CLOSED
from .pipeline import PROBE_HEADER, Admission, Pipeline

# RFC 9110 §7.6.1 hop-by-hop fields, plus what the proxy consumes or rewrites itself.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Proxy-Connection",
    )
)
NOT_FORWARDED = HOP_BY_HOP | frozenset(
    # X-Request-Id is set again (the caller's when it is printable, else a generated one)
    {"host", "authorization", "expect", "x-scale-up-timeout", "x-request-id", PROBE_HEADER.lower()}
)
NOT_RETURNED = HOP_BY_HOP | frozenset({"content-length"})
REQUEST_ID = "X-Request-Id"
MAX_REQUEST_ID_LEN = 200
CHUNK_BYTES = 64 * 1024
SMALL_BODY_BYTES = 64 * 1024


class ResponseCut(Exception):
    """The response had started when it broke: no error can be sent any more.

    `reason` is None when the client went away; otherwise the replica failed mid-response and
    the connection must be aborted so the client sees a truncated response, not a complete one.
    """

    def __init__(self, response: web.StreamResponse, code: int | str, reason: str | None):
        super().__init__(reason or "client closed the connection")
        self.response = response
        self.code = code
        self.reason = reason


# Generated ids: a random per-process prefix and a counter — unique, and cheaper than uuid4 on
# every request (which showed up at 3 % of the proxy's CPU in a profile).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def request_id(incoming: str | None) -> str:
    """Keep the caller's id when it is printable and short; else make one."""
    if incoming and len(incoming) <= MAX_REQUEST_ID_LEN and incoming.isprintable() and incoming.isascii():
        return incoming
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _drop_set(headers, always: frozenset[str]) -> frozenset[str]:
    """`always` plus the fields the Connection header names (RFC 9110 §7.6.1)."""
    value = headers.get("Connection")
    if not value:
        return always
    return always | {h.strip().lower() for h in value.split(",")}


def _require_utf8(name: str, value: str) -> None:
    """aiohttp decodes header bytes as UTF-8 with surrogateescape: a surrogate is a byte that
    was not UTF-8. Such a value cannot be sent on as it came."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest(
            f"the value of the header {shown(name)} is not valid UTF-8; send header values as ASCII"
        ) from None


def upstream_headers(request: web.Request, rid: str) -> CIMultiDict[str]:
    """The headers the replica gets (without any replica's API key). Raises BadRequest for a
    value that cannot be forwarded; called before admission, so such a request is never held."""
    drop = _drop_set(request.headers, NOT_FORWARDED)
    headers = CIMultiDict([(k, v) for k, v in request.headers.items() if k.lower() not in drop])
    for name, value in headers.items():
        if not value.isascii():
            _require_utf8(name, value)
    remote = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {remote}" if prior else remote
    headers["X-Forwarded-Proto"] = request.scheme
    host = request.host
    if host:
        if not host.isascii():
            _require_utf8("Host", host)
        headers["X-Forwarded-Host"] = host
    headers[REQUEST_ID] = rid
    return headers


class _Body:
    """The request body as a one-shot stream that enforces the size limit as it flows."""

    def __init__(self, request: web.Request, limit: int):
        self._request = request
        self._limit = limit
        self.started = False
        self.too_large = False
        self.malformed: MalformedBody | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        seen = 0
        try:
            async for chunk in self._request.content.iter_chunked(CHUNK_BYTES):
                seen += len(chunk)
                if seen > self._limit:
                    self.too_large = True
                    raise PayloadTooLarge("request body over the limit")
                yield chunk
        except RequestPayloadError as error:
            self.malformed = malformed(error)
            raise


def malformed(error: RequestPayloadError) -> MalformedBody:
    return MalformedBody(f"the request body is malformed ({shown(str(error), 200)}); fix how the client frames it")


async def _read_small_body(request: web.Request, length: int, timeout_s: float) -> bytes:
    # Bounded: a client that announces a small body and stalls must not hold its request (and
    # its pending count) forever. A streamed body is bounded by the replica's timeouts instead.
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except RequestPayloadError as error:
        raise malformed(error) from None
    except TimeoutError:
        raise RequestTimeout(
            f"the request body ({length} bytes announced) did not arrive within {timeout_s:g} s"
        ) from None


async def forward(
    request: web.Request,
    admission: Admission,
    pipeline: Pipeline,
    session: aiohttp.ClientSession,
    rid: str,
    headers: CIMultiDict[str] | None = None,
) -> web.StreamResponse:
    """Send the request to a replica and stream its response back. Raises ProxyError on failure
    before the response has started; after that, a failure aborts the connection. `headers`:
    from `upstream_headers` (made here when not given)."""
    if headers is None:
        headers = upstream_headers(request, rid)
    body: _Body | bytes | None = None
    if request.body_exists:
        length = request.content_length
        if length is not None and length <= SMALL_BODY_BYTES:
            # Small bodies of known length are read at once: one write upstream instead of a
            # streaming task, and a retry can resend them. Anything larger streams.
            body = await _read_small_body(request, length, pipeline.config.header_read_timeout_s)
        else:
            body = _Body(request, pipeline.config.max_body_bytes)
    start_s = pipeline.config.upstream_response_start_timeout_s
    tried: set[str] = set()
    refused: UpstreamFailed | None = None
    while True:
        replica = admission.choose(tried)
        if replica is None:
            raise refused or UpstreamFailed(f"endpoint {admission.entry.key} has no replica to send to")
        tried.add(replica.id)
        # encoded=True: the path goes out exactly as it came, not requoted nor normalised.
        url = URL(f"http://{replica.address}{admission.upstream_path}", encoded=True)
        if replica.api_key is not None:
            headers["Authorization"] = f"Bearer {replica.api_key}"
        else:
            headers.popall("Authorization", None)  # a retry may follow a replica that had a key
        # Around the request call only, which returns with the response headers: a hung replica
        # fails fast, and a long stream after its headers is left to the idle timeout.
        deadline = asyncio.timeout(start_s)
        try:
            async with deadline:
                upstream = await session.request(
                    request.method, url, headers=headers, data=body.chunks() if isinstance(body, _Body) else body,
                    allow_redirects=False,
                )
        except aiohttp.ClientConnectorError as error:
            refused = UpstreamFailed(
                f"could not connect to replica {replica.id} of endpoint {admission.entry.key}: {error.os_error}",
                cause="upstream_connect",
            )
            # Nothing was sent: safe to retry once, on another replica.
            if len(tried) >= 2 or (isinstance(body, _Body) and body.started):
                raise refused from None
            admission.refresh()
            continue
        except TimeoutError:
            if deadline.expired():
                raise UpstreamTimeout(
                    f"replica {replica.id} of endpoint {admission.entry.key} sent no response headers "
                    f"within {start_s:g} s",
                ) from None
            raise UpstreamTimeout(
                f"replica {replica.id} of endpoint {admission.entry.key} sent nothing for "
                f"{pipeline.config.upstream_idle_timeout_s:g} s",
            ) from None
        except aiohttp.ClientError as error:
            if isinstance(body, _Body) and body.too_large:
                raise pipeline.too_large() from None
            if isinstance(body, _Body) and body.malformed is not None:
                raise body.malformed from None
            raise UpstreamFailed(
                f"replica {replica.id} of endpoint {admission.entry.key} failed: {error}",
            ) from None
        break

    async with upstream:
        drop = _drop_set(upstream.headers, NOT_RETURNED)
        headers = CIMultiDict([(k, v) for k, v in upstream.headers.items() if k.lower() not in drop])
        headers[REQUEST_ID] = rid
        length = upstream.content_length
        if length is not None and length <= SMALL_BODY_BYTES and "Transfer-Encoding" not in upstream.headers:
            # A small body of known length is sent with its headers in one write: half the
            # syscalls of streaming it, and nothing is lost since it cannot be a stream.
            try:
                body = await upstream.content.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise UpstreamFailed(f"replica {replica.id} broke the response: {error!r}") from None
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None and "Transfer-Encoding" not in upstream.headers:
            response.content_length = length
        await response.prepare(request)
        reader = upstream.content
        while True:
            try:
                # readany returns whatever has arrived, so each SSE event is written as it comes.
                chunk = await reader.readany()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise ResponseCut(response, 502, f"replica {replica.id} broke the response: {error!r}") from None
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionResetError:
                raise ResponseCut(response, CLIENT_CLOSED, None) from None
        await response.write_eof()
        return response
