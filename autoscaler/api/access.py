"""Who the caller of the management API is and what it may do: the bearer token's identity (found
once per request by `authenticate`, before anything is looked up), membership of a namespace,
the admin's `*`, and `whoami`. Routes marked `public` need no token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from autoscaler.api.base import API, Conflict, Forbidden, Unauthenticated
from autoscaler.store import store as store_mod
from autoscaler.store.store import Store
from proxy.core.auth import bearer_token, plausible_token

IDENTITY = web.RequestKey("identity", object)  # who the middleware found the caller to be
_PUBLIC = "endpointd_needs_no_token"  # the attribute that marks a handler public

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public(handler: Handler) -> Handler:
    """Mark a management route as one that needs no token."""
    setattr(handler, _PUBLIC, True)
    return handler


@web.middleware
async def authenticate(request: web.Request, handler):
    """Who is asking, before anything is looked up: a caller without a valid token learns nothing,
    not even which endpoints or routes exist. Inside `errors_middleware`, which renders its 401."""
    if not getattr(handler, _PUBLIC, False):
        token = _token(request)  # none: refused before the API's store is even looked at
        request[IDENTITY] = await _verified(token, request.app[API].store)
    return await handler(request)


async def identity(request: web.Request, store: Store):
    if IDENTITY in request:
        return request[IDENTITY]
    return await _verified(_token(request), store)


def _token(request: web.Request) -> str:
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise Unauthenticated("this call needs a token: send the header 'Authorization: Bearer <token>'")
    return token


async def _verified(token: str, store: Store):
    found = await store.verify_token(token) if plausible_token(token) else None
    if found is None:
        raise Unauthenticated("the bearer token is invalid or revoked")
    return found


async def member(request: web.Request, store: Store, namespace: str):
    who = await identity(request, store)
    if not (who.is_admin or who.user == namespace or namespace in who.orgs):
        raise Forbidden(f"user {who.user} may not manage namespace {namespace}: it is neither that user nor a member of that org")
    return who


async def admin(request: web.Request, store: Store, what: str):
    """The caller, who must be an admin to do `what` (`only an admin may {what}`)."""
    who = await identity(request, store)
    if not who.is_admin:
        raise Forbidden(f"only an admin may {what}")
    return who


def domain_taken(error: store_mod.DomainTaken, who) -> Conflict:
    """409 for a domain held elsewhere, naming the holder only to those who may see it."""
    if who.may_access(error.namespace):
        return Conflict(f"route.domain {error.domain} is already taken by endpoint {error.namespace}/{error.name}; choose another")
    return Conflict(f"route.domain {error.domain} is already taken by an endpoint of another namespace; choose another")


def add_routes(router: web.UrlDispatcher, api: Any) -> None:
    """`GET /api/whoami-v2`: the token's user, its orgs and whether it is an admin (`api.store`
    answers for the tokens)."""

    async def whoami(request: web.Request) -> web.Response:
        who = await identity(request, api.store)
        return web.json_response(
            {"type": "user", "name": who.user, "orgs": [{"name": o} for o in sorted(who.orgs)],
             "isAdmin": who.is_admin}
        )

    router.add_get("/whoami-v2", whoami)
