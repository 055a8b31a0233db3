"""The proxy as an aiohttp application: the request handler, `/metrics`, and the upstream
connection pool owned by the app's lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import ProxyConfig
from .control import ControlPlane
from .errors import ProxyError, to_http
from .forward import REQUEST_ID, ResponseCut, forward, request_id
from .hold import HEADER as SCALE_UP_TIMEOUT
from .metrics import CLIENT_CLOSED
from .pipeline import PROBE_HEADER, Pipeline

log = logging.getLogger("endpointd.proxy")

PIPELINE = web.AppKey("pipeline", Pipeline)
SESSION = web.AppKey("upstream_session", aiohttp.ClientSession)

# Keep-alive to replicas: long enough to outlive gaps between requests, short enough that a
# replica's restart does not leave many dead pooled sockets behind.
UPSTREAM_KEEPALIVE_S = 30.0
# The client must not add headers the caller did not send: an added Accept-Encoding would make
# engines compress responses the caller never asked to be compressed.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def error_response(error: ProxyError, rid: str) -> web.Response:
    status, headers, body = to_http(error)
    headers[REQUEST_ID] = rid
    return web.Response(status=status, headers=headers, body=body)


async def handle(request: web.Request) -> web.StreamResponse:
    return await serve(request, request.app)


async def serve(request: web.Request, app: Mapping) -> web.StreamResponse:
    """Proxy one request; `app` holds the pipeline and the upstream session (the main app, or a
    sub-app's `config_dict` when a management route defers to an endpoint's domain)."""
    pipeline = app[PIPELINE]
    headers = request.headers
    rid = request_id(headers.get(REQUEST_ID))
    try:
        admission = await pipeline.admit(
            host=request.host,
            raw_path=request.raw_path,
            authorization=headers.get("Authorization"),
            scale_up_timeout=headers.get(SCALE_UP_TIMEOUT),
            content_length=request.content_length,
            probe=headers.get(PROBE_HEADER),
        )
    except ProxyError as error:
        return error_response(error, rid)
    code: int | str = CLIENT_CLOSED  # what is recorded if the client's disconnect cancels us
    try:
        response = await forward(request, admission, pipeline, app[SESSION], rid)
        code = response.status
        return response
    except ProxyError as error:
        code = error.status
        admission.refused(error)
        return error_response(error, rid)
    except ResponseCut as cut:
        code = cut.code
        if cut.reason is not None:
            log.warning("request %s to %s cut: %s", rid, admission.entry.key, cut.reason)
            if request.transport is not None:
                request.transport.close()  # the client must see a truncated response, not a complete one
        return cut.response
    finally:
        admission.finish(code)


def routed_by_host(request: web.Request) -> bool:
    """Whether the request's Host is an endpoint's route domain: then every path belongs to that
    endpoint, even one the app also serves (/metrics, /v2/...)."""
    host = request.host
    return bool(host) and request.config_dict[PIPELINE].control.lookup_host(host) is not None


async def metrics(request: web.Request) -> web.StreamResponse:
    if routed_by_host(request):
        return await handle(request)
    body = generate_latest(request.app[PIPELINE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    config = app[PIPELINE].config
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_S)
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=config.upstream_connect_timeout_s,
        sock_read=config.upstream_idle_timeout_s,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=SKIP_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        app[SESSION] = session
        yield


def add_proxy(app: web.Application, pipeline: Pipeline) -> None:
    """Mount the proxy on `app`: endpoint routes, `/metrics`, and every path no other route
    takes (Host-routed endpoints, or a JSON 404). No middleware: the hot path pays for none.
    Other handlers of the app must defer to `handle` when `routed_by_host`."""
    app[PIPELINE] = pipeline
    app.cleanup_ctx.append(_upstream_session)
    app.router.add_route("*", "/endpoints/{tail:.*}", handle)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", handle)


def make_app(config: ProxyConfig, control: ControlPlane, probe_secret: str | None = None) -> web.Application:
    app = web.Application()
    add_proxy(app, Pipeline(config, control, probe_secret=probe_secret))
    return app
