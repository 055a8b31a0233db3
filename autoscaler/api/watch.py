"""The read routes that show what happened: each replica's timeline, the control plane's events
and the audit log. Every one needs a token of the namespace (or an admin's)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from autoscaler.api import access, query
from autoscaler.model.times import wire_time
from engines.runtime import EndpointKey

MAX_EVENTS = 1000
MAX_AUDIT_PAGE = 500


def _at(seconds: float | None) -> str | None:
    return None if seconds is None else wire_time(datetime.fromtimestamp(seconds, UTC))


def add_routes(router: web.UrlDispatcher, api: Any) -> None:
    """The read routes, on the `/v2` sub-app's router; `api` is the ManagementApi."""

    async def replicas(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        await access.member(request, api.store, ns)
        await api.record(ns, name)
        items = [
            {
                "id": r.id, "state": r.state.value, "revision": r.revision, "createdAt": _at(r.created_at),
                "readyAt": _at(r.ready_at), "stoppedAt": _at(r.stopped_at), "exitCode": r.exit_code,
                "message": r.message, "gpus": list(r.gpus),
                "timeline": [{"state": state.value, "at": _at(at)} for state, at in r.timeline],
            }
            for r in api.controller.replicas(EndpointKey(ns, name))
        ]
        return web.json_response({"items": items})

    async def events(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        await access.member(request, api.store, ns)
        rec = await api.record(ns, name)
        since = query.integer(request, "since", lo=0, hi=2**62, default=0)
        limit = query.integer(request, "limit", lo=1, hi=MAX_EVENTS, default=100)
        found = await api.controller.events.read(rec.uid, since=since, limit=limit)
        items = [
            {"seq": e.seq, "at": _at(e.at), "kind": e.kind, "reason": e.reason, "replica": e.replica, "inputs": e.inputs}
            for e in found
        ]
        return web.json_response({"items": items, "last": found[-1].seq if found else since})

    async def audit(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        if ns == "*":
            await access.admin(request, api.store, "read the audit log of every namespace ('*')")
        else:
            await access.member(request, api.store, ns)
        limit = query.integer(request, "limit", lo=1, hi=MAX_AUDIT_PAGE, default=100)
        entries = await api.store.list_audit(
            None if ns == "*" else ns, limit + 1,
            endpoint=query.text(request, "endpoint"), action=query.text(request, "action"),
            since=query.moment(request, "since"), before=query.integer(request, "cursor", lo=1, hi=2**62),
        )
        page = entries[:limit]
        items: list[dict[str, Any]] = [
            {"at": wire_time(e.at), "user": e.actor, "action": e.action, "namespace": e.namespace,
             "endpoint": e.name, "details": e.details, "sourceIp": e.source_ip, "requestId": e.request_id}
            for e in page
        ]
        next_cursor = str(page[-1].id) if len(entries) > limit else None
        return web.json_response({"items": items, "nextCursor": next_cursor})

    router.add_get("/endpoint/{ns}/{name}/replica", replicas)
    router.add_get("/endpoint/{ns}/{name}/events", events)
    router.add_get("/audit/{ns}", audit)
