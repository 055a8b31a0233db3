"""What every route family of the management API needs: its errors and how they reach a caller,
the request body as JSON, the app key of the API object, and the operator's limits.

Errors reach a caller through `errors_middleware`: an EndpointdError (engines/errors.py, the one
error-to-status table) as its `status` and its sentence, anything else as a 500 whose traceback is
logged. The API's own refusals, each with a sentence that says what to fix:
    Invalid 400, Unauthenticated 401, Forbidden 403, NotFound 404, Conflict 409
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from autoscaler.model import wire
from autoscaler.store import store as store_mod
from engines.capacity import Need
from engines.errors import EndpointdError
from engines.model_roots import ModelRoots
from proxy.core.errors import ERROR_MESSAGE, header_safe
from proxy.core.forwarding import REQUEST_ID, request_id
from proxy.management.app import handle, routed_by_host

log = logging.getLogger("endpointd.api")

class ApiObject(Protocol):
    """What the middlewares need of the API object (endpoints.ManagementApi): its store."""

    store: store_mod.Store


API: web.AppKey[ApiObject] = web.AppKey("management_api", ApiObject)
# Deeper JSON than any real body: nesting beyond it is refused (it once raised RecursionError).
MAX_JSON_DEPTH = 32


class Invalid(EndpointdError):
    status = 400


class Unauthenticated(EndpointdError):
    status = 401


class Forbidden(EndpointdError):
    status = 403


class NotFound(EndpointdError):
    status = 404


class Conflict(EndpointdError):
    status = 409


def error_body(status: int, message: str, rid: str) -> web.Response:
    # header_safe: a message can quote a crafted path or name; a control character echoed into
    # a header once dropped the connection.
    return web.json_response(
        {"error": message}, status=status, headers={REQUEST_ID: rid, ERROR_MESSAGE: header_safe(message)}
    )


@web.middleware
async def errors_middleware(request: web.Request, handler):
    """Every failure of a management call becomes `{"error": ...}` with its status; no traceback
    reaches a caller."""
    if routed_by_host(request):  # the Host names an endpoint: /v2/... is that endpoint's path
        return await handle(request)
    rid = request_id(request.headers.get(REQUEST_ID))
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status >= 400 and error.content_type != "application/json":
            return error_body(error.status, f"{error.reason}: {request.method} {request.path}", rid)
        raise
    except Exception as error:
        if isinstance(error, EndpointdError) and error.status != 500:
            return error_body(error.status, str(error), rid)
        log.exception("management call %s %s failed (request id %s)", request.method, request.path, rid)
        return error_body(500, f"internal error; quote request id {rid} when reporting it", rid)


@dataclass(frozen=True)
class Limits:
    """What the operator allows and what this host is, as far as a request body may ask."""

    roots: ModelRoots
    own_names: frozenset[str]  # host names of this server (lower-case, no trailing dot): never a route.domain
    max_replicas: int
    never_fits: Callable[[wire.EndpointSpec], str | None]  # why the spec could never run here
    needs: Callable[[wire.EndpointSpec], Need]  # what one replica holds (the controller counts the same)


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    too_deep = Invalid(f"the request body nests deeper than {MAX_JSON_DEPTH} levels; no endpoint needs that")
    try:
        value = json.loads(raw or b"null")
    except RecursionError:
        raise too_deep from None
    except ValueError as error:
        raise Invalid(f"the request body is not valid JSON: {error}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise too_deep
    return value


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
