"""The management API assembled: the Inference Endpoints v2 routes under `/v2` and the Hub's
under `/api`, each a sub-app of its own, so that its middlewares (errors, then the caller's
identity) never run on the proxy's hot path. Each route family registers its own routes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from autoscaler.api import access, catalog, endpoints, metrics, openapi, quotas, ratelimits, usage, watch
from autoscaler.api import logs as log_routes
from autoscaler.api.base import API, errors_middleware
from autoscaler.api.endpoints import ManagementApi
from proxy.core.limits import LimitTable


def _sub_app(api: ManagementApi) -> web.Application:
    sub = web.Application(middlewares=[errors_middleware, access.authenticate])
    sub[API] = api
    return sub


def add_api(app: web.Application, api: ManagementApi, *, logs: Any, analytics: Any, limits: LimitTable,
            usage_meter: Any = None) -> None:
    """Mount the API as sub-apps. `logs` (a LogService), `analytics` (an Analytics) and `usage_meter`
    (a UsageMeter) serve the logs, metrics and usage routes; `limits` is the proxy's table of rate limits."""
    v2 = _sub_app(api)
    endpoints.add_routes(v2.router, api)
    openapi.add_routes(v2.router)
    watch.add_routes(v2.router, api)
    quotas.add_routes(v2.router, api)
    log_routes.add_routes(v2.router, api, logs)
    metrics.add_routes(v2.router, api, analytics)
    ratelimits.add_routes(v2.router, api, limits)
    usage.add_routes(v2.router, api, usage_meter)
    catalog.add_suggest_route(v2.router, api)
    hub = _sub_app(api)
    access.add_routes(hub.router, api)
    catalog.add_catalog_routes(hub.router, api)
    app.add_subapp("/v2", v2)
    app.add_subapp("/api", hub)
