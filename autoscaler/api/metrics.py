"""The analytics routes of the management API, on the `/v2` sub-app (its error middleware answers an
EndpointdError with its status):

    GET /v2/endpoint/{ns}/{name}/open-metrics   the endpoint's metrics in OpenMetrics text, for a
                                                Prometheus scrape with a bearer token
    GET /v2/endpoint/{ns}/{name}/metrics        the dashboard's time series as JSON
                                                (?from=&to=&step=, times RFC 3339 or unix seconds)

Both need a token of the namespace (its user, a member of its org) or an admin's: a namespace's
traffic is as private as its endpoints. `OPENAPI_PATHS` describes them for openapi.py.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from autoscaler.api import access
from autoscaler.api.base import NotFound
from autoscaler.model import times
from autoscaler.observe.analytics import MAX_POINTS, MAX_STEP_S, Analytics, QueryError
from autoscaler.observe.analytics_series import CLASSES, COUNTS, GAUGES, QUANTILES, REPLICA_GAUGES
from autoscaler.observe.openmetrics import CONTENT_TYPE
from engines.runtime import EndpointKey


def add_routes(router: web.UrlDispatcher, api: Any, analytics: Analytics) -> None:
    """Register the routes on the `/v2` sub-app's router (whose middleware renders errors); `api`
    is the ManagementApi (its store checks the token)."""

    async def open_metrics(request: web.Request) -> web.Response:
        key = await _endpoint(request, api)
        body = analytics.openmetrics(key)
        if body is None:
            raise _not_found(key)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def series(request: web.Request) -> web.Response:
        key = await _endpoint(request, api)
        query = request.query
        start = parse_time(query.get("from"), "from")  # a QueryError is a 400
        end = parse_time(query.get("to"), "to")
        step = parse_step(query.get("step"))
        found = await analytics.series(key, start, end, step)
        if found is None:
            raise _not_found(key)
        return web.json_response(found)

    router.add_get("/endpoint/{ns}/{name}/open-metrics", open_metrics)
    router.add_get("/endpoint/{ns}/{name}/metrics", series)


async def _endpoint(request: web.Request, api: Any) -> EndpointKey:
    ns, name = request.match_info["ns"], request.match_info["name"]
    await access.member(request, api.store, ns)
    return EndpointKey(ns, name)


def _not_found(key: EndpointKey) -> Exception:
    return NotFound(f"endpoint {key} does not exist")


def parse_time(raw: str | None, name: str) -> float | None:
    """RFC 3339 (`2025-01-02T03:04:05Z`, any offset) or unix seconds; QueryError naming the parameter."""
    if raw is None or raw == "":
        return None
    try:
        return times.parse_time(raw).timestamp()
    except times.OutOfRange:
        raise QueryError(f"`{name}` = {raw!r} is not a time: unix seconds must be between 0 and {times.MAX_UNIX_S} "
                         "(1970 to 9999-12-31T23:59:59Z)") from None
    except times.NoTimeZone:
        raise QueryError(f"`{name}` = {raw!r} has no time zone: end it with Z or an offset such as +02:00") from None
    except times.NotATime:
        raise QueryError(f"`{name}` = {raw!r} is not a time: give RFC 3339 (2025-01-02T03:04:05Z) or unix seconds") from None


def parse_step(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise QueryError(f"`step` = {raw!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= MAX_STEP_S):
        raise QueryError(f"`step` must be more than 0 and at most {MAX_STEP_S:g} seconds, got {raw!r}")
    return value


# --- OpenAPI -----------------------------------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}
_NS = {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"}, "description": "user or org"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME = {"type": "string", "description": "RFC 3339 with a time zone, or unix seconds"}
_NUMBERS = {"type": "array", "items": {"type": ["number", "null"]}}
_COUNTS = {"type": "array", "items": {"type": ["integer", "null"]}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": "error", "content": {"application/json": {"schema": _ERROR}}} for code in codes}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": sorted(properties), "properties": properties}


SERIES = _object({
    "from": {"type": "number", "description": "start of the first step, unix seconds (aligned to the resolution)"},
    "to": {"type": "number", "description": "end of the range, unix seconds"},
    "step": {"type": "number", "description": "seconds per point: the asked step rounded up to a multiple of the resolution"},
    "resolution": {"type": "number", "description": "seconds per stored sample the answer was made from (10 or 300 by default)"},
    "timestamps": {"type": "array", "items": {"type": "number"}, "description": "start of each step, unix seconds"},
    "series": _object({
        "requests": _object({name: {**_COUNTS, "description": "requests answered in the step"} for name in COUNTS}),
        "requests_share": _object({name: {**_NUMBERS, "description": "share of the step's requests, 0 to 1"} for name in CLASSES}),
        "latency_seconds": _object({label: _NUMBERS for label, _ in QUANTILES}),
        **{name: {**_NUMBERS, "description": "mean over the step"} for name in GAUGES},
    }),
    "replicas": {"type": "object", "description": "per replica id, the same arrays",
                 "additionalProperties": _object({name: _NUMBERS for name in REPLICA_GAUGES})},
})

OPENAPI_PATHS: dict[str, Any] = {
    "/v2/endpoint/{ns}/{name}/open-metrics": {"get": {
        "summary": "the endpoint's metrics in OpenMetrics text (latency_distribution, http_requests, usage, engine signals)",
        "parameters": [_NS, _NAME],
        "responses": {
            "200": {"description": "success", "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
            **_errors(401, 403, 404),
        },
    }},
    "/v2/endpoint/{ns}/{name}/metrics": {"get": {
        "summary": "the endpoint's analytics as time series (requests by status class, latency quantiles, "
                   "pending, replicas, usage, engine signals); default the last hour",
        "parameters": [
            _NS, _NAME,
            {"name": "from", "in": "query", "required": False, "schema": _TIME, "description": "default: an hour before `to`"},
            {"name": "to", "in": "query", "required": False, "schema": _TIME, "description": "default: now"},
            {"name": "step", "in": "query", "required": False,
             "schema": {"type": "string", "description": f"seconds per point, up to {MAX_STEP_S:g}; at most {MAX_POINTS} points"}},
        ],
        "responses": {
            "200": {"description": "success", "content": {"application/json": {"schema": SERIES}}},
            **_errors(400, 401, 403, 404),
        },
    }},
}
