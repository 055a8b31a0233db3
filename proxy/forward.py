"""Forwarding over aiohttp: pooled upstream connections, bodies streamed both ways, SSE flushed
event by event, the client's disconnect cancelling the upstream call."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .errors import PayloadTooLarge, UpstreamFailed, UpstreamTimeout
from .metrics import CLIENT_CLOSED
from .pipeline import Admission, Pipeline

# RFC 9110 §7.6.1 hop-by-hop fields, plus what the proxy consumes or rewrites itself.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Proxy-Connection",
    )
)
NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "expect", "x-scale-up-timeout"}
NOT_RETURNED = HOP_BY_HOP | {"content-length"}
REQUEST_ID = "X-Request-Id"
MAX_REQUEST_ID_LEN = 200
CHUNK_BYTES = 64 * 1024


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


def request_id(incoming: str | None) -> str:
    """Keep the caller's id when it is printable and short; else make one."""
    if incoming and len(incoming) <= MAX_REQUEST_ID_LEN and incoming.isprintable() and incoming.isascii():
        return incoming
    return uuid.uuid4().hex


def _dropped_by_connection(headers) -> set[str]:
    value = headers.get("Connection")
    return {h.strip().lower() for h in value.split(",")} if value else set()


def upstream_headers(request: web.Request, rid: str) -> CIMultiDict[str]:
    drop = NOT_FORWARDED | _dropped_by_connection(request.headers)
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
    remote = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {remote}" if prior else remote
    headers["X-Forwarded-Proto"] = request.scheme
    if request.host:
        headers["X-Forwarded-Host"] = request.host
    headers[REQUEST_ID] = rid
    return headers


class _Body:
    """The request body as a one-shot stream that enforces the size limit as it flows."""

    def __init__(self, request: web.Request, limit: int):
        self._request = request
        self._limit = limit
        self.started = False
        self.too_large = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        seen = 0
        async for chunk in self._request.content.iter_chunked(CHUNK_BYTES):
            seen += len(chunk)
            if seen > self._limit:
                self.too_large = True
                raise PayloadTooLarge("request body over the limit")
            yield chunk


async def forward(
    request: web.Request, admission: Admission, pipeline: Pipeline, session: aiohttp.ClientSession, rid: str
) -> web.StreamResponse:
    """Send the request to a replica and stream its response back. Raises ProxyError on failure
    before the response has started; after that, a failure aborts the connection."""
    headers = upstream_headers(request, rid)
    body = _Body(request, pipeline.config.max_body_bytes) if request.body_exists else None
    tried: set[str] = set()
    refused: UpstreamFailed | None = None
    while True:
        replica = admission.choose(tried)
        if replica is None:
            raise refused or UpstreamFailed(f"endpoint {admission.entry.key} has no replica to send to")
        tried.add(replica.id)
        url = f"http://{replica.address}{admission.upstream_path}"
        try:
            upstream = await session.request(
                request.method, url, headers=headers, data=body.chunks() if body else None,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectorError as error:
            refused = UpstreamFailed(
                f"could not connect to replica {replica.id} of endpoint {admission.entry.key}: {error.os_error}",
                cause="upstream_connect",
            )
            # Nothing was sent: safe to retry once, on another replica.
            if len(tried) >= 2 or (body is not None and body.started):
                raise refused from None
            admission.refresh()
            continue
        except TimeoutError:
            raise UpstreamTimeout(
                f"replica {replica.id} of endpoint {admission.entry.key} sent nothing for "
                f"{pipeline.config.upstream_idle_timeout_s:g} s",
            ) from None
        except aiohttp.ClientError as error:
            if body is not None and body.too_large:
                raise pipeline.too_large() from None
            raise UpstreamFailed(
                f"replica {replica.id} of endpoint {admission.entry.key} failed: {error}",
            ) from None
        break

    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        drop = NOT_RETURNED | _dropped_by_connection(upstream.headers)
        for name, value in upstream.headers.items():
            if name.lower() not in drop:
                response.headers.add(name, value)
        response.headers[REQUEST_ID] = rid
        if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
            response.content_length = upstream.content_length
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
