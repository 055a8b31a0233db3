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
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from .errors import (
    MalformedBody,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamFailed,
    UpstreamTimeout,
    shown,
)
from .core import REQUEST_ID, may_retry, request_id, returned_pairs  # noqa: F401 - REQUEST_ID, request_id re-exported
from .core import forwarded_pairs
from .metrics import CLIENT_CLOSED
from .pipeline import Admission, Pipeline

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


def upstream_headers(request: web.Request, rid: str) -> CIMultiDict[str]:
    """The headers the replica gets (without any replica's API key). Raises BadRequest for a
    value that cannot be forwarded; called before admission, so such a request is never held."""
    headers = request.headers
    return CIMultiDict(forwarded_pairs(
        headers.items(), headers.get("Connection"), remote=request.remote or "", scheme=request.scheme,
        host=request.host, prior_forwarded_for=headers.get("X-Forwarded-For"), rid=rid,
    ))


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
            if not may_retry(len(tried), isinstance(body, _Body) and body.started):
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
        headers = CIMultiDict(returned_pairs(upstream.headers.items(), upstream.headers.get("Connection")))
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
