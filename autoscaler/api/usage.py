"""The usage route of the management API, on the `/v2` sub-app:

    GET /v2/usage/{ns}?from=&to=&step=   a namespace's usage and cost per endpoint and bucket
                                          (times RFC 3339 or unix seconds, step in seconds)

A member of the namespace (its user, a member of its org) or an admin may read it; `*` (admins
only) is every namespace. `OPENAPI_PATHS` describes it for openapi.py.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from autoscaler.api import access
from autoscaler.api.metrics import parse_time
from autoscaler.model.usage import MAX_BUCKETS, MAX_RANGE_S, MIN_STEP_S, UsageQueryError
from autoscaler.observe.usage import UsageMeter


def add_routes(router: web.UrlDispatcher, api: Any, usage: UsageMeter) -> None:
    """Register the route on the `/v2` sub-app's router; `api` is the ManagementApi (its store
    checks the token)."""

    async def namespace_usage(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        if ns == "*":
            await access.admin(request, api.store, "read the usage of every namespace ('*')")
        else:
            await access.member(request, api.store, ns)
        query = request.query
        start = parse_time(query.get("from"), "from")
        end = parse_time(query.get("to"), "to")
        return web.json_response(await usage.report(ns, start, end, _step(query.get("step"))))

    router.add_get("/usage/{ns}", namespace_usage)


def _step(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise UsageQueryError(f"`step` = {raw[:40]!r} is not a number of seconds") from None


FIGURES = {"$ref": "#/components/schemas/UsageFigures"}
SCHEMAS: dict[str, Any] = {
    "UsageFigures": {"type": "object", "required": [
        "replicaSeconds", "replicas", "requests", "bytesIn", "bytesOut", "tokensIn", "tokensOut", "cost"], "properties": {
        "replicaSeconds": {"type": "number", "minimum": 0, "description": "replicas holding resources, in seconds"},
        "replicas": {"type": "array", "items": {"type": "object", "required": [
            "accelerator", "instanceType", "instanceSize", "replicaSeconds", "ratePerHour", "cost"], "properties": {
            "accelerator": {"type": "string"}, "instanceType": {"type": "string"}, "instanceSize": {"type": "string"},
            "replicaSeconds": {"type": "number", "minimum": 0},
            "ratePerHour": {"type": ["number", "null"], "minimum": 0,
                            "description": "the operator's price per hour of one unit (x1); null: unpriced"},
            "cost": {"type": "number", "minimum": 0},
        }}},
        "requests": {"type": "integer", "minimum": 0},
        "bytesIn": {"type": "integer", "minimum": 0, "description": "request body bytes"},
        "bytesOut": {"type": "integer", "minimum": 0, "description": "response body bytes"},
        "tokensIn": {"type": ["integer", "null"], "minimum": 0, "description": "null: the engine counts no tokens"},
        "tokensOut": {"type": ["integer", "null"], "minimum": 0},
        "cost": {"type": "number", "minimum": 0},
    }},
}
USAGE = {"type": "object", "required": ["namespace", "from", "to", "step", "buckets", "endpoints", "total", "unpriced"],
         "properties": {
    "namespace": {"type": "string"}, "from": {"type": "string", "format": "date-time"},
    "to": {"type": "string", "format": "date-time"}, "step": {"type": "number"},
    "buckets": {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS},
    "endpoints": {"type": "array", "items": {"type": "object", "required": ["namespace", "name", "buckets", "total"],
                                              "properties": {
        "namespace": {"type": "string"}, "name": {"type": "string"},
        "buckets": {"type": "array", "description": "the buckets with any usage, in order", "items": {"allOf": [
            FIGURES, {"type": "object", "required": ["from", "to"], "properties": {
                "from": {"type": "string", "format": "date-time"}, "to": {"type": "string", "format": "date-time"}}}]}},
        "total": FIGURES,
    }}},
    "total": FIGURES,
    "unpriced": {"type": "array", "items": {"type": "string"}, "description": "instance types used that have no rate"},
}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


PARAMS = (
    {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"},
     "description": "user or org, or * (admins) for every namespace"},
    _query("from", {"type": "string"}, "RFC 3339 time or unix seconds (default: a day before `to`)"),
    _query("to", {"type": "string"}, "RFC 3339 time or unix seconds (default: now)"),
    _query("step", {"type": "number", "minimum": MIN_STEP_S, "maximum": MAX_RANGE_S},
           f"bucket length in seconds (default: the whole range); at most {MAX_BUCKETS} buckets"),
)
ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
OPENAPI_PATHS = {
    "/v2/usage/{ns}": {"get": {
        "summary": "usage and cost per endpoint and bucket: replica-seconds by hardware, requests, bytes, tokens",
        "parameters": list(PARAMS),
        "responses": {"200": {"description": "success", "content": {"application/json": {"schema": USAGE}}},
                      **{str(code): ERROR for code in (400, 401, 403)}},
    }},
}
