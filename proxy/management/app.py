"""The proxy's part of the aiohttp application (the management listener): `/metrics`, and the
answer to what no other route takes. The data plane is the raw server's (proxy/raw/): it hands
every other request's connection to this app, and takes it back at the connection's next request.

`/metrics` lists every namespace's endpoints, so it needs a bearer token: an admin's, or one whose
identity has the `metrics` scope (401 without a token, 403 with one that has neither). On an
endpoint's route domain, /metrics is that endpoint's path like any other. `make_metrics_app` is
the same /metrics alone, for a listener of its own (`metrics_port`).

A request for an endpoint reaches this app only pipelined behind one of its own requests (the
raw server takes a connection back only between requests): it is refused, as the raw server
refuses the converse, with a 400 that closes the connection.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.auth import METRICS_SCOPE, authorize_scope
from ..core.config import ProxyConfig
from ..core.control import ControlPlane
from ..core.errors import NotFound, ProxyError, pipelined, to_http
from ..core.forwarding import REQUEST_ID, request_id
from ..core.pipeline import Pipeline
from ..core.routing import resolve
from ..workers.families import families_of, merge_families

log = logging.getLogger("endpointd.proxy")

PIPELINE = web.AppKey("pipeline", Pipeline)


def error_response(error: ProxyError, rid: str, path: str | None = None) -> web.Response:
    status, headers, body = to_http(error, path)
    headers[REQUEST_ID] = rid
    response = web.Response(status=status, headers=headers, body=body)
    if error.closes_connection:
        response.force_close()
    return response


async def handle(request: web.Request) -> web.StreamResponse:
    """A request no route of the app takes: a JSON 404 (or the 400 of a target that is not a
    path); one for an endpoint, pipelined behind a request of this app, a 400 that closes."""
    pipeline = request.config_dict[PIPELINE]
    try:
        resolve(pipeline.control, request.host, request.raw_path)
        error: ProxyError = pipelined("a request for an endpoint", "a request for this server's own routes")
    except ProxyError as refusal:
        error = refusal
    pipeline.refused(error)
    return error_response(error, request_id(request.headers.get(REQUEST_ID)), request.raw_path)


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
        sets = [families_of(pipeline.metrics.registry), *await pipeline.remote_families()]
        body = generate_latest(_Merged(merge_families(sets)))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, REQUEST_ID: rid})


class _Merged:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def add_proxy(app: web.Application, pipeline: Pipeline) -> None:
    """Mount the proxy on `app`: `/metrics`, and every path no other route takes (`handle`).
    Other handlers of the app must defer to `handle` when `routed_by_host`. The raw server
    (proxy/server.py `listen`) serves the data plane of an app with a proxy."""
    app[PIPELINE] = pipeline
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
