"""The OpenAPI document of the management API, served at `/v2/openapi.json` to anyone (no token).
A test checks that its paths and methods are exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from autoscaler.api import access
from autoscaler.api.logs import OPENAPI_PATHS as LOGS_PATHS
from autoscaler.api.metrics import OPENAPI_PATHS as METRICS_PATHS
from autoscaler.api.quotas import OPENAPI_PATHS as QUOTAS_PATHS
from autoscaler.api.ratelimits import OPENAPI_PATHS as RATELIMITS_PATHS
from autoscaler.api.usage import OPENAPI_PATHS as USAGE_PATHS
from autoscaler.api.usage import SCHEMAS as USAGE_SCHEMAS
from autoscaler.model.state import State
from autoscaler.model.timelines import ReplicaState

ERROR = {"$ref": "#/components/schemas/Error"}
ENDPOINT = {"$ref": "#/components/schemas/EndpointWithStatus"}
NS = {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"}, "description": "user or org"}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any], *, params=(NS, NAME), body: dict[str, Any] | None = None,
        errors=(400, 401, 403, 404)) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": list(params),
        "responses": {"200": _json(ok, "success"), **{str(c): _json(ERROR, "error") for c in errors}},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Image": {
        "type": "object", "minProperties": 1, "maxProperties": 1,
        "description": "one key: vLLM, sGLang, tgi, tei, llamacpp, hfServe, custom or huggingface",
        "additionalProperties": {"type": "object"},
    },
    "Scaling": {"type": "object", "properties": {
        "minReplica": {"type": "integer", "minimum": 0}, "maxReplica": {"type": "integer", "minimum": 1},
        "scaleToZeroTimeout": {"type": ["integer", "null"], "minimum": 1, "maximum": 2880},
        "sleepAfter": {"type": ["integer", "null"], "minimum": 1, "maximum": 86400,
                       "description": "idle seconds before the engines sleep (vLLM, sGLang, llamacpp); null: never"},
        "measure": {"type": "object", "description": "{pendingRequests: number}, {hardwareUsage: percent} or {engineQueue: number}"},
    }},
    "Compute": {"type": "object", "required": ["accelerator", "instanceType", "instanceSize"], "properties": {
        "accelerator": {"enum": ["cpu", "gpu"]}, "instanceType": {"type": "string"},
        "instanceSize": {"type": "string", "pattern": "^x[1-9][0-9]*$"},
        "scaling": {"$ref": "#/components/schemas/Scaling"},
    }},
    "Model": {"type": "object", "required": ["repository", "framework", "image"], "properties": {
        "repository": {"type": "string", "description": "a Hub repository id or a local directory"},
        "framework": {"type": "string", "description": "pytorch, tensorflow, onnx, jax or custom: whose weights are fetched"},
        "revision": {"type": ["string", "null"], "description": "sent: a branch, tag or commit; returned: the commit "
                     "it was pinned to at create, or sha256:... (a local directory's content hash)"},
        "task": {"type": ["string", "null"]},
        "downloadPattern": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": 64,
                            "description": "files fetched (allow_patterns); null: all. Computed at create unless sent"},
        "image": {"$ref": "#/components/schemas/Image"},
        "command": {"type": "array", "items": {"type": "string"}}, "args": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "secrets": {"type": "object", "additionalProperties": {"type": "string"}, "description": "never returned"},
    }},
    "Endpoint": {"type": "object", "required": ["name", "type", "provider", "compute", "model"], "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"},
        "type": {"enum": ["public", "authenticated", "protected", "private"]},
        "provider": {"type": "object", "properties": {"vendor": {"type": "string"}, "region": {"type": "string"}}},
        "compute": {"$ref": "#/components/schemas/Compute"}, "model": {"$ref": "#/components/schemas/Model"},
        "route": {"type": "object", "properties": {"domain": {"type": "string"}, "path": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
    }},
    "EndpointWithStatus": {"allOf": [{"$ref": "#/components/schemas/Endpoint"}, {"type": "object", "required": ["healthRoute", "status"], "properties": {
        "healthRoute": {"type": "string"},
        "status": {"type": "object", "required": ["state", "createdAt", "updatedAt"], "properties": {
            "state": {"enum": [state.value for state in State]},
            "message": {"type": "string"}, "url": {"type": "string"}, "createdAt": {"type": "string", "format": "date-time"},
            "updatedAt": {"type": "string", "format": "date-time"}, "readyReplica": {"type": "integer"},
            "targetReplica": {"type": "integer"},
        }},
    }}]},
}

LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": ENDPOINT}}}
WHOAMI = {"type": "object", "required": ["type", "name", "orgs"], "properties": {
    "type": {"const": "user"}, "name": {"type": "string"},
    "orgs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
}}
PROVIDER = {"type": "object", "required": ["vendors"], "properties": {"vendors": {"type": "array"}}}
STATES = [state.value for state in ReplicaState]
REPLICAS = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {
    "type": "object", "required": ["id", "state", "revision", "createdAt", "timeline"], "properties": {
        "id": {"type": "string"}, "state": {"enum": STATES}, "revision": {"type": "integer"},
        "createdAt": {"type": "string", "format": "date-time"},
        "readyAt": {"type": ["string", "null"], "format": "date-time"},
        "stoppedAt": {"type": ["string", "null"], "format": "date-time"},
        "exitCode": {"type": ["integer", "null"]}, "message": {"type": "string"},
        "gpus": {"type": "array", "items": {"type": "string"}},
        "timeline": {"type": "array", "items": {"type": "object", "properties": {
            "state": {"enum": STATES}, "at": {"type": "string", "format": "date-time"}}}},
    }}}}}
EVENTS = {"type": "object", "required": ["items", "last"], "properties": {
    "last": {"type": "integer", "description": "pass as `since` to get only newer events"},
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"}, "kind": {"type": "string"},
        "reason": {"type": "string"}, "replica": {"type": ["string", "null"]}, "inputs": {"type": "object"},
    }}}}}
AUDIT = {"type": "object", "required": ["items", "nextCursor"], "properties": {
    "nextCursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next (older) page"},
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "at": {"type": "string", "format": "date-time"}, "user": {"type": "string"}, "action": {"type": "string"},
        "namespace": {"type": "string"}, "endpoint": {"type": "string"}, "details": {"type": "object"},
        "sourceIp": {"type": "string"}, "requestId": {"type": "string"},
    }}}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


SINCE_SEQ = _query("since", {"type": "integer", "minimum": 0}, "only events after this seq")
LIMIT_EVENTS = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many (latest)")
AUDIT_PARAMS = (
    {**NS, "description": "user or org, or * (admins) for every namespace"},
    _query("endpoint", {"type": "string", "maxLength": 200}, "one endpoint's entries"),
    _query("action", {"type": "string", "maxLength": 200}, "one action's entries, e.g. create"),
    _query("since", {"type": "string"}, "RFC 3339 time or unix seconds"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size (default 100)"),
    _query("cursor", {"type": "string"}, "the nextCursor of the previous page"),
)


SUGGESTION = {"type": "object", "required": ["engine", "image", "present", "reason"], "properties": {
    "repository": {"type": "string"}, "revision": {"type": "string"}, "accelerator": {"enum": ["cpu", "gpu"]},
    "engine": {"type": "string"}, "image": {"$ref": "#/components/schemas/Image"},
    "task": {"type": ["string", "null"]}, "framework": {"type": "string"}, "reason": {"type": "string"},
    "ggufFiles": {"type": "array", "items": {"type": "string"}}, "containerImage": {"type": "string"},
    "present": {"type": ["boolean", "null"], "description": "whether the engine's image is on this host (null: unknown)"},
    "mustPull": {"type": ["boolean", "null"]},
    "runnable": {"type": "boolean", "description": "the image is here or pullable (unknown counts as runnable)"},
    "unavailable": {"type": ["string", "null"], "description": "why the image cannot run on this host"},
    "passedOver": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "engines not suggested because their image cannot run here, and why"},
    "downloadPattern": {"type": ["array", "null"], "items": {"type": "string"}},
    "source": {"enum": ["hub", "cache", "local"]},
}}
SUGGEST_PARAMS = (
    {**_query("repository", {"type": "string", "maxLength": 1024}, "a Hub id or a local directory under a model root"),
     "required": True},
    _query("accelerator", {"enum": ["cpu", "gpu"]}, "the instance's accelerator (default cpu)"),
    _query("gguf", {"type": "string", "maxLength": 256}, "the GGUF file to serve (default: Q4_K_M, else the smallest)"),
    _query("revision", {"type": "string", "maxLength": 256}, "a branch, tag or commit (default main)"),
)
CATALOG_LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {
    "type": "object", "required": ["repoId", "modelName", "authorName", "license", "task", "createdAt", "recipes"],
    "properties": {
        "repoId": {"type": "string"}, "modelName": {"type": "string"}, "authorName": {"type": "string"},
        "license": {"type": "string"}, "task": {"type": "string"}, "createdAt": {"type": "string", "format": "date-time"},
        "recipes": {"type": "array", "items": {"type": "object", "required": ["publicId", "accelerator", "engineType"],
                    "properties": {"publicId": {"type": "string"}, "accelerator": {"type": "string"},
                                   "engineType": {"type": "string"}, "ggufFile": {"type": ["string", "null"]},
                                   "revision": {"type": ["string", "null"]},
                                   "deployable": {"type": "boolean", "description": "it deploys on this host"},
                                   "reason": {"type": ["string", "null"],
                                              "description": "why not; a deploy is refused with it"}}}},
    }}}}}
CATALOG_LIST_PARAMS = (
    _query("accelerator", {"type": "string", "maxLength": 256}, "only recipes on this accelerator"),
    _query("engine", {"type": "string", "maxLength": 256}, "only recipes of this engine (vllm, llamacpp, tei, ...)"),
    _query("license", {"type": "string", "maxLength": 256}, "only models under this license"),
    _query("task", {"type": "string", "maxLength": 256}, "only models for this task"),
    _query("search", {"type": "string", "maxLength": 256}, "only models whose id contains this"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many models"),
)
DEPLOY_BODY = {"type": "object", "required": ["namespace"], "properties": {
    "namespace": {"type": "string"}, "config": {"type": "object", "properties": {"name": {"type": "string"}}},
    "accelerator": {"type": "string", "description": "model route only: pick the recipe on this accelerator"},
    "ggufFile": {"type": "string", "description": "model route only: pick the recipe serving this GGUF file"},
}}
DEPLOYED = {"type": "object", "required": ["endpoint"], "properties": {"endpoint": ENDPOINT}}
REPO = {"name": "repo", "in": "path", "required": True, "schema": {"type": "string"}, "description": "org/name"}
RECIPE = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "publicId"}


def document() -> dict[str, Any]:
    endpoint_ref = {"$ref": "#/components/schemas/Endpoint"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "endpointd management API", "version": "2",
                 "description": "The Inference Endpoints v2 wire format, served by endpointd."},
        "components": {
            "schemas": {**SCHEMAS, **USAGE_SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/whoami-v2": {"get": _op("who the token belongs to", WHOAMI, params=(), errors=(401,))},
            "/v2/endpoint/{ns}": {
                "get": _op("list a namespace's endpoints", LIST, params=(NS,), errors=(401, 403)),
                "post": _op("create an endpoint (409: taken, or beyond the namespace's quota)", ENDPOINT, params=(NS,),
                            body=endpoint_ref, errors=(400, 401, 403, 404, 409)),
            },
            "/v2/endpoint/{ns}/{name}": {
                "get": _op("get an endpoint", ENDPOINT),
                "put": _op("update an endpoint (sparse; 409: beyond the namespace's quota)", ENDPOINT,
                           body={"type": "object"}, errors=(400, 401, 403, 404, 409)),
                "delete": _op("delete an endpoint", {"type": "object"}),
            },
            "/v2/endpoint/{ns}/{name}/pause": {"post": _op("pause: drain and stop, never wake", ENDPOINT)},
            "/v2/endpoint/{ns}/{name}/resume": {"post": _op("resume a paused endpoint", ENDPOINT)},
            "/v2/endpoint/{ns}/{name}/scale-to-zero": {"post": _op("drain and stop; the next request wakes it", ENDPOINT)},
            "/v2/provider/{ns}": {"get": _op("this host's hardware and what is free", PROVIDER, params=(NS,), errors=(401, 403))},
            "/v2/endpoint/{ns}/{name}/replica": {"get": _op("each replica's timeline (stopped ones of the last 24 h too)", REPLICAS)},
            "/v2/endpoint/{ns}/{name}/events": {"get": _op(
                "lifecycle and scaling events: why it scaled, why a replica was replaced", EVENTS,
                params=(NS, NAME, SINCE_SEQ, LIMIT_EVENTS))},
            "/v2/audit/{ns}": {"get": _op("the audit log, newest first", AUDIT, params=AUDIT_PARAMS, errors=(400, 401, 403))},
            "/v2/engines/suggest": {"get": _op(
                "the engine to run a repository with, its settings, and whether its image is here", SUGGESTION,
                params=SUGGEST_PARAMS, errors=(400, 401, 502))},
            "/api/v1/catalog/list": {"get": _op("the catalog's models and their recipes", CATALOG_LIST,
                                                params=CATALOG_LIST_PARAMS, errors=(400, 401))},
            "/api/v1/catalog/model/{repo}/deploy": {"post": _op(
                "deploy a catalog model's default recipe (or the one for accelerator / ggufFile)", DEPLOYED,
                params=(REPO,), body=DEPLOY_BODY, errors=(400, 401, 403, 404, 409, 502))},
            "/api/v1/catalog/recipe/{id}/deploy": {"post": _op(
                "deploy one catalog recipe", DEPLOYED, params=(RECIPE,), body=DEPLOY_BODY,
                errors=(400, 401, 403, 404, 409, 502))},
            "/v2/openapi.json": {"get": _op("this document", {"type": "object"}, params=(), errors=())},
            **LOGS_PATHS,
            **METRICS_PATHS,
            **QUOTAS_PATHS,
            **RATELIMITS_PATHS,
            **USAGE_PATHS,
        },
    }


@access.public
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(document())


def add_routes(router: web.UrlDispatcher) -> None:
    """`GET /v2/openapi.json`, on the `/v2` sub-app's router."""
    router.add_get("/openapi.json", openapi_document)
