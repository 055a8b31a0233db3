"""Quotas per namespace in the management API: the routes that read and set them, and the check
that refuses an endpoint create or update that could never fit its namespace's quota.

    GET    /v2/quotas            every namespace's quota and use (admins)
    GET    /v2/quotas/{ns}       a namespace's quota and what it uses now (its members, admins)
    PUT    /v2/quotas/{ns}       set it: {"gpus", "cpus", "memory", "replicas", "endpoints"} (admins)
    DELETE /v2/quotas/{ns}       lift it (admins)

A write is stored first, then handed to the controller, which bounds every scale-up by it from
then on (and starts what a raised quota lets start); each is audited as `quota-set` or
`quota-unset`. An org's namespace is a namespace like any other: its quota bounds what all its
endpoints hold together, whichever member made them; there is no rule beyond that.

The refusal at create and update is 409 Conflict: the request is valid and its caller may make it,
but it conflicts with the namespace's current state — its quota and what its other endpoints
keep — and succeeds once that changes (another endpoint paused or deleted, the quota raised).
403 would read as a permission the caller lacks, 422 as a body to fix. What is counted as in use
there is what the namespace keeps for certain: every endpoint toward `endpoints`, and the
minReplica of each other endpoint that is neither paused nor scaled to zero toward the rest (more
than that is an autoscaled peak, which goes; less may be a replica waiting for room). Replicas
above minReplica are bounded at each scale-up instead, by what is held then.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from autoscaler.api import access
from autoscaler.api.base import Conflict, NotFound, read_json
from autoscaler.model import quotas
from autoscaler.model.intent import asleep
from autoscaler.model.quotas import Quota, Use, per_replica, refusal
from autoscaler.model.wire import ChangeKind, EndpointSpec, change_kind
from autoscaler.store import store as store_mod


async def admit(api: Any, ns: str, name: str, spec: EndpointSpec, old: EndpointSpec | None = None) -> None:
    """Refuse (409) a create (`old` None) or an update of `ns/name` to `spec` that could never
    fit the namespace's quota. An update is checked only when it asks more than before (a higher
    minReplica, a larger instance) or new containers (a roll). The caller holds the namespace's
    turn (`ManagementApi.namespaces`), so two writes cannot both take the last room."""
    quota = await api.store.get_quota(ns)
    if quota is None:
        return
    floor = per_replica(api.limits.needs(spec)).times(spec.compute.scaling.min_replica)
    if old is not None:
        before = per_replica(api.limits.needs(old)).times(old.compute.scaling.min_replica)
        grows = any(getattr(floor, key) > getattr(before, key) for key in quotas.HELD)
        if not grows and change_kind(old, spec) is not ChangeKind.ROLL:
            return
    use, others = Use(), 0
    for rec in await api.store.list_endpoints(ns):
        if rec.name == name:
            continue
        others += 1
        if not rec.paused and not asleep(api.intent(rec), api.signals(rec)):
            other = api.spec(rec)
            use = use + per_replica(api.limits.needs(other)).times(other.compute.scaling.min_replica)
    verb = "created" if old is None else "changed"
    if old is None:
        why = refusal(quota, Use(endpoints=others), Use(endpoints=1), ns)
        if why is not None:
            raise Conflict(f"endpoint {ns}/{name} is not {verb}: {why}; delete an endpoint of {ns} or ask an admin "
                           "to raise the quota")
    why = refusal(quota, use, floor, ns)
    if why is not None:
        instance = f"{spec.compute.instance_type} {spec.compute.instance_size}"
        raise Conflict(
            f"endpoint {ns}/{name} is not {verb}: {why} (in use: the minReplica of {ns}'s other endpoints that are "
            f"neither paused nor scaled to zero; asked: minReplica {spec.compute.scaling.min_replica} of "
            f"{instance}); lower minReplica, pause or scale to zero another endpoint, or ask an admin to raise "
            "the quota")


def add_routes(router: web.UrlDispatcher, api: Any) -> None:
    """The quota routes, on the `/v2` sub-app's router; `api` is the ManagementApi."""

    async def view(ns: str, quota: Quota | None) -> dict[str, Any]:
        use = api.controller.quota_use(ns) + Use(endpoints=await api.store.count_endpoints(ns))
        return {"namespace": ns, "quota": quotas.to_json(quota or Quota()), "use": quotas.use_json(use)}

    async def exists(ns: str) -> None:
        if await api.store.namespace_kind(ns) is None:
            raise NotFound(f"namespace {ns} does not exist; create the user or org first (`endpointd users add`)")

    async def get_one(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        await access.member(request, api.store, ns)
        await exists(ns)
        return web.json_response(await view(ns, await api.store.get_quota(ns)))

    async def get_all(request: web.Request) -> web.Response:
        await access.admin(request, api.store, "list every namespace's quota")
        found = await api.store.list_quotas()
        return web.json_response({"items": [await view(ns, quota) for ns, quota in found.items()]})

    async def put(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        who = await access.admin(request, api.store, f"set the quota of namespace {ns}")
        quota = quotas.parse(await read_json(request))
        await exists(ns)
        async with api.namespaces.hold(ns):  # not between another write's check and its store
            await api.store.set_quota(ns, quota)
            api.controller.set_quota(ns, quota)
        await api.audit(request, who.user, "quota-set", ns, "", quotas.to_json(quota))
        return web.json_response(await view(ns, quota))

    async def delete(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        who = await access.admin(request, api.store, f"remove the quota of namespace {ns}")
        try:
            await api.store.unset_quota(ns)
        except store_mod.NotFound:
            raise NotFound(f"namespace {ns} has no quota") from None
        api.controller.set_quota(ns, None)
        await api.audit(request, who.user, "quota-unset", ns, "", {})
        return web.json_response(await view(ns, None))

    router.add_get("/quotas", get_all)
    router.add_get("/quotas/{ns}", get_one)
    router.add_put("/quotas/{ns}", put)
    router.add_delete("/quotas/{ns}", delete)


# --- the OpenAPI document's part ----------------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}
_NS = {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"}, "description": "user or org"}
_MEMORY_TEXT = {"type": "string", "maxLength": quotas.MAX_TEXT, "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(B|KiB|MiB|GiB|TiB)?\s*$",
                "description": "a size with a unit, e.g. 32GiB (KiB, MiB, GiB, TiB), a whole number of bytes in all"}


def _limit(key: str, description: str) -> dict[str, Any]:
    kind = "number" if key == "cpus" else "integer"
    return {"type": [kind, "null"], "minimum": 0, "maximum": quotas.MAXIMA[key], "description": description}


_LIMITS = {
    "gpus": _limit("gpus", "GPUs held at once"),
    "cpus": _limit("cpus", "CPUs (the replicas' limits) held at once"),
    "memory": {"oneOf": [_limit("memory", "bytes of memory (the replicas' limits) held at once"), _MEMORY_TEXT]},
    "replicas": _limit("replicas", "replicas holding resources at once (starting, ready, sleeping, leaving)"),
    "endpoints": _limit("endpoints", "endpoints, in any state"),
}
QUOTA_BODY = {"type": "object", "additionalProperties": False, "properties": _LIMITS,
              "description": "every limit at once: one absent or null is unlimited"}
_COUNT = {"type": "number", "minimum": 0}
QUOTA_VIEW = {"type": "object", "required": ["namespace", "quota", "use"], "properties": {
    "namespace": {"type": "string"},
    "quota": {"type": "object", "required": list(quotas.KEYS), "description": "null: unlimited",
              "properties": {key: _limit(key, "") | {"description": "null: unlimited"} for key in quotas.KEYS}},
    "use": {"type": "object", "required": list(quotas.KEYS), "properties": {key: _COUNT for key in quotas.KEYS},
            "description": "held now by replicas starting, ready, sleeping or leaving; endpoints in any state"},
}}


def _op(summary: str, ok: dict[str, Any], errors: tuple[int, ...], params=(_NS,), body=None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": list(params), "responses": {
        "200": {"description": "success", "content": {"application/json": {"schema": ok}}},
        **{str(code): {"description": "error", "content": {"application/json": {"schema": _ERROR}}} for code in errors}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


OPENAPI_PATHS: dict[str, Any] = {
    "/v2/quotas": {"get": _op("every namespace's quota and what it uses now (admins)",
                              {"type": "object", "required": ["items"],
                               "properties": {"items": {"type": "array", "items": QUOTA_VIEW}}},
                              (401, 403), params=())},
    "/v2/quotas/{ns}": {
        "get": _op("a namespace's quota and what it uses now", QUOTA_VIEW, (401, 403, 404)),
        "put": _op("set a namespace's quota, every limit at once (admins)", QUOTA_VIEW, (400, 401, 403, 404),
                   body=QUOTA_BODY),
        "delete": _op("remove a namespace's quota (admins)", QUOTA_VIEW, (401, 403, 404)),
    },
}
