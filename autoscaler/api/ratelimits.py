"""A namespace's rate limits on the data plane: `GET /v2/ratelimits/{ns}` (its members and admins)
shows what holds for its endpoints; `PUT` sets an admin's override of the configured defaults
(`{"rpm": N, "concurrent": N}`, either may be null: the default; 0: unlimited) and `DELETE`
removes it (admins only). A change is kept in the store and counts at once: it is set in the
proxy's LimitTable (proxy/core/limits.py), which passes it on to every worker process."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from autoscaler.api import access
from autoscaler.api.base import Invalid, NotFound, read_json
from proxy.core.config import MAX_CONCURRENT, MAX_RPM
from proxy.core.limits import Limit, LimitTable, Override

FIELDS = {"rpm": MAX_RPM, "concurrent": MAX_CONCURRENT}


def add_routes(router: web.UrlDispatcher, api: Any, limits: LimitTable) -> None:
    """The routes, on the `/v2` sub-app's router; `api` is the ManagementApi (its store), `limits`
    the proxy's table."""
    # The store and the table change together: two PUTs of one namespace cannot leave them apart.
    writing = asyncio.Lock()

    async def show(request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        await access.member(request, api.store, namespace)
        return web.json_response(shown(namespace, limits))

    async def put(request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        await access.admin(request, api.store, "set a namespace's rate limits")
        override = parsed(await read_json(request))
        if await api.store.namespace_kind(namespace) is None:
            raise NotFound(f"no user or org is named {namespace}; add it with `endpointd users add` first")
        async with writing:
            await api.store.set_rate_limit(namespace, override)
            limits.set(namespace, override)
        return web.json_response(shown(namespace, limits))

    async def delete(request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        await access.admin(request, api.store, "remove a namespace's rate limits")
        async with writing:
            if not await api.store.delete_rate_limit(namespace):
                raise NotFound(f"namespace {namespace} has no rate limits of its own: the defaults hold")
            limits.set(namespace, None)
        return web.json_response(shown(namespace, limits))

    router.add_get("/ratelimits/{ns}", show)
    router.add_put("/ratelimits/{ns}", put)
    router.add_delete("/ratelimits/{ns}", delete)


def parsed(body: Any) -> Override:
    if not isinstance(body, dict):
        raise Invalid('the body must be a JSON object such as {"rpm": 600, "concurrent": 8}')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise Invalid(f"unknown field {unknown[0]!r}: a rate limit has rpm and concurrent")
    for name, most in FIELDS.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most):
            raise Invalid(f"{name} must be an integer between 0 (unlimited) and {most}, or null (the default); got {value!r}")
    if body.get("rpm") is None and body.get("concurrent") is None:
        raise Invalid("give rpm, concurrent or both; to go back to the defaults, DELETE the namespace's rate limits")
    return Override(body.get("rpm"), body.get("concurrent"))


def _limit(limit: Limit) -> dict[str, int]:
    return {"rpm": limit.rpm, "concurrent": limit.concurrent}


def shown(namespace: str, limits: LimitTable) -> dict[str, Any]:
    """What holds for `namespace` (0: unlimited), the admin's override of it, the defaults, and each token's."""
    override = limits.overrides.get(namespace)
    return {
        "namespace": namespace, **_limit(limits.namespace(namespace)),
        "override": None if override is None else {"rpm": override.rpm, "concurrent": override.concurrent},
        "defaults": _limit(limits.default), "token": _limit(limits.token),
    }


_LIMIT = {"type": "object", "properties": {"rpm": {"type": "integer"}, "concurrent": {"type": "integer"}}}
_SHOWN = {"type": "object", "required": ["namespace", "rpm", "concurrent", "override", "defaults", "token"], "properties": {
    "namespace": {"type": "string"},
    "rpm": {"type": "integer", "description": "requests per minute to the namespace's endpoints; 0: unlimited"},
    "concurrent": {"type": "integer", "description": "requests in flight at once, held ones included; 0: unlimited"},
    "override": {"type": ["object", "null"], "description": "an admin's, over the defaults; null fields: the default"},
    "defaults": _LIMIT, "token": {**_LIMIT, "description": "each bearer token's, whatever the namespace"},
}}
_BODY = {"type": "object", "properties": {
    "rpm": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_RPM},
    "concurrent": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_CONCURRENT},
}}
_NS = {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"}, "description": "user or org"}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _op(summary: str, errors: tuple[int, ...], body: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary, "parameters": [_NS],
        "responses": {"200": {"description": "the limits now", "content": {"application/json": {"schema": _SHOWN}}},
                      **{str(code): _ERROR for code in errors}},
    }
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _BODY}}}
    return op


OPENAPI_PATHS: dict[str, Any] = {"/v2/ratelimits/{ns}": {
    "get": _op("the rate limits of a namespace's endpoints (members and admins)", (401, 403)),
    "put": _op("set a namespace's rate limits over the defaults (admins)", (400, 401, 403, 404), body=True),
    "delete": _op("remove a namespace's own rate limits: the defaults hold again (admins)", (401, 403, 404)),
}}
