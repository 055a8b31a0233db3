"""The proxy as an aiohttp application: the request handler, `/metrics`, and the upstream
connection pool owned by the app's lifecycle.

`/metrics` lists every namespace's endpoints, so it needs a bearer token: an admin's, or one whose
identity has the `metrics` scope (401 without a token, 403 with one that has neither). On an
endpoint's route domain, /metrics is that endpoint's path like any other. `make_metrics_app` is
the same /metrics alone, for a listener of its own (`metrics_port`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .auth import METRICS_SCOPE, authorize_scope
from .config import ProxyConfig
from .control import ControlPlane
from .errors import NotFound, ProxyError, to_http
from .forward import REQUEST_ID, ResponseCut, forward, request_id, upstream_headers
from .hold import HEADER as SCALE_UP_TIMEOUT
from .metrics import CLIENT_CLOSED
from .pipeline import PROBE_HEADER, Pipeline
from .workers.codec import families_out, merge_families

log = logging.getLogger("endpointd.proxy")

PIPELINE = web.AppKey("pipeline", Pipeline)
SESSION = web.AppKey("upstream_session", aiohttp.ClientSession)

# Keep-alive to replicas: long enough to outlive gaps between requests, short enough that a
# replica's restart does not leave many dead pooled sockets behind.
UPSTREAM_KEEPALIVE_S = 30.0
# The client must not add headers the caller did not send: an added Accept-Encoding would make
# engines compress responses the caller never asked to be compressed.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def error_response(error: ProxyError, rid: str, path: str | None = None) -> web.Response:
    status, headers, body = to_http(error, path)
    headers[REQUEST_ID] = rid
    response = web.Response(status=status, headers=headers, body=body)
    if error.closes_connection:
        response.force_close()
    return response


async def handle(request: web.Request) -> web.StreamResponse:
    return await serve(request, request.app)


async def serve(request: web.Request, app: Mapping) -> web.StreamResponse:
    """Proxy one request; `app` holds the pipeline and the upstream session (the main app, or a
    sub-app's `config_dict` when a management route defers to an endpoint's domain)."""
    pipeline = app[PIPELINE]
    headers = request.headers
    rid = request_id(headers.get(REQUEST_ID))
    try:
        forwarded = upstream_headers(request, rid)  # refuses what cannot be forwarded, before any hold
    except ProxyError as error:
        pipeline.refused(error)
        return error_response(error, rid, request.raw_path)
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
        return error_response(error, rid, request.raw_path)
    code: int | str = CLIENT_CLOSED  # what is recorded if the client's disconnect cancels us
    try:
        response = await forward(request, admission, pipeline, app[SESSION], rid, forwarded)
        code = response.status
        return response
    except ProxyError as error:
        code = error.status
        admission.refused(error)
        if error.closes_connection:
            end = getattr(request.protocol, "end_after_response", None)  # proxy.connections' guard
            if end is not None:
                end()
        return error_response(error, rid, request.raw_path)
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
    return await metrics_response(request, request.app[PIPELINE])


async def metrics_response(request: web.Request, pipeline: Pipeline) -> web.StreamResponse:
    """The Prometheus text, for an admin or a token with the `metrics` scope."""
    rid = request_id(request.headers.get(REQUEST_ID))
    try:
        await authorize_scope(request.headers.get("Authorization"), pipeline.tokens, METRICS_SCOPE, "/metrics")
    except ProxyError as error:
        pipeline.refused(error)
        return error_response(error, rid)
    if pipeline.remote_families is None:
        body = generate_latest(pipeline.metrics.registry)
    else:  # this process's families and every worker's, added up
        sets = [families_out(pipeline.metrics.registry), *await pipeline.remote_families()]
        body = generate_latest(_Merged(merge_families(sets)))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, REQUEST_ID: rid})


class _Merged:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


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


def make_metrics_app(pipeline: Pipeline) -> web.Application:
    """Only `GET /metrics` (same token rule), for the separate `metrics_port` listener."""

    async def only_metrics(request: web.Request) -> web.StreamResponse:
        return await metrics_response(request, pipeline)

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        rid = request_id(request.headers.get(REQUEST_ID))
        return error_response(NotFound("this listener serves only GET /metrics"), rid)

    app = web.Application()
    app.router.add_get("/metrics", only_metrics)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return app


def make_app(config: ProxyConfig, control: ControlPlane, probe_secret: str | None = None) -> web.Application:
    app = web.Application()
    add_proxy(app, Pipeline(config, control, probe_secret=probe_secret))
    return app
