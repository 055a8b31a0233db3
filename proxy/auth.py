"""Who may call an endpoint: bearer-token verification (cached briefly) and the access rule."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from .control import AuthType, ControlPlane, Identity, RouteEntry
from .errors import Forbidden, Unauthorized

# Bounds memory when many distinct (e.g. garbage) tokens arrive: the cache is simply emptied when
# it reaches this size, which costs one store lookup per live token afterwards.
MAX_CACHED_TOKENS = 100_000


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class TokenCache:
    """Remembers token verdicts (valid and invalid) for `ttl_s`, so a revoked token stops
    working within `ttl_s` while a hot endpoint costs no store lookup per request.

    Entries are keyed by the token's SHA-256 digest: the plaintext is never kept or compared.
    """

    def __init__(self, control: ControlPlane, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._control = control
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[bytes, tuple[float, Identity | None]] = {}

    async def identity(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        identity = await self._control.verify_token(token)
        if len(self._entries) >= MAX_CACHED_TOKENS:
            self._entries.clear()
        self._entries[key] = (now + self._ttl_s, identity)
        return identity


async def authorize(entry: RouteEntry, authorization: str | None, tokens: TokenCache) -> Identity | None:
    """Raise Unauthorized/Forbidden unless the caller may use `entry`; runs before anything else."""
    if entry.auth is AuthType.PUBLIC:
        return None
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized(
            f"endpoint {entry.key} needs a token: send the header 'Authorization: Bearer <token>'"
        )
    identity = await tokens.identity(token)
    if identity is None:
        raise Unauthorized("the bearer token is invalid or revoked; create a new one with `endpointd tokens create`")
    if entry.auth is AuthType.PRIVATE and not identity.may_access(entry.namespace):
        raise Forbidden(
            f"endpoint {entry.key} is private: user {identity.user} is neither {entry.namespace} "
            f"nor a member of it"
        )
    return identity
