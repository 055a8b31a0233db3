"""Who may call an endpoint: bearer-token verification (cached briefly) and the access rules —
for an endpoint (its auth type) and for the server's own routes (`/metrics`: an admin, or a
token whose identity has the `metrics` scope)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from .control import AuthType, ControlPlane, Identity, RouteEntry
from .errors import Forbidden, Unauthorized

# Bounds memory when many distinct (e.g. garbage) tokens arrive: the cache is simply emptied when
# it reaches this size, which costs one store lookup per live token afterwards.
MAX_CACHED_TOKENS = 100_000
# Tokens are URL-safe text far shorter than this; anything longer, or not printable ASCII (an
# undecodable header arrives as surrogates), is no token of ours and is refused unhashed.
MAX_TOKEN_CHARS = 1024
METRICS_SCOPE = "metrics"
SCOPES = frozenset({METRICS_SCOPE})  # every scope the proxy checks
INVALID_TOKEN = "the bearer token is invalid or revoked; create a new one with `endpointd tokens create`"


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
        self._remember(key, now, identity)
        return identity

    def cached(self, token: str) -> tuple[bool, Identity | None]:
        """(True, verdict) when a fresh verdict is cached, else (False, None): no lookup."""
        hit = self._entries.get(hashlib.sha256(token.encode()).digest())
        if hit is not None and hit[0] > self._clock():
            return True, hit[1]
        return False, None

    def _remember(self, key: bytes, now: float, identity: Identity | None) -> None:
        if len(self._entries) >= MAX_CACHED_TOKENS:
            self._entries.clear()
        self._entries[key] = (now + self._ttl_s, identity)


def plausible_token(token: str) -> bool:
    """Whether `token` could be one of ours at all; anything else is refused without a lookup."""
    return len(token) <= MAX_TOKEN_CHARS and token.isascii() and token.isprintable()


class Lookup:
    """The verdict on a token the cache does not hold: only the store can tell (`identity`)."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token

    async def identity(self, tokens: TokenCache) -> Identity:
        identity = await tokens.identity(self.token)
        if identity is None:
            raise Unauthorized(INVALID_TOKEN)
        return identity


def identify(authorization: str | None, tokens: TokenCache, needed_for: str) -> Identity | Lookup:
    """The caller's identity, or a Lookup when only the store knows the token. Unauthorized
    without a token, or with one we do not know (a malformed one included: the same 401, without
    a store lookup)."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized(f"{needed_for} needs a token: send the header 'Authorization: Bearer <token>'")
    if not plausible_token(token):
        raise Unauthorized(INVALID_TOKEN)
    hit, identity = tokens.cached(token)
    if not hit:
        return Lookup(token)
    if identity is None:
        raise Unauthorized(INVALID_TOKEN)
    return identity


async def authorize_scope(authorization: str | None, tokens: TokenCache, scope: str, what: str) -> Identity:
    """Raise Unauthorized/Forbidden unless the caller is an admin or holds `scope`."""
    found = identify(authorization, tokens, what)
    identity = await found.identity(tokens) if isinstance(found, Lookup) else found
    if not identity.has_scope(scope):
        raise Forbidden(
            f"{what} needs an admin token or a token with the {scope!r} scope; user {identity.user}'s token "
            f"has neither (create one with `endpointd tokens create USER --scope {scope}`)"
        )
    return identity


def authorize(entry: RouteEntry, authorization: str | None, tokens: TokenCache) -> Identity | None | Lookup:
    """Who may call `entry`: None for a public endpoint, the caller's identity, or a Lookup when
    the token's verdict is not cached (then `check_access` on what the store says). Raises
    Unauthorized/Forbidden; runs before anything else."""
    if entry.auth is AuthType.PUBLIC:
        return None
    found = identify(authorization, tokens, f"endpoint {entry.key}")
    return found if isinstance(found, Lookup) else check_access(entry, found)


def check_access(entry: RouteEntry, identity: Identity) -> Identity:
    if entry.auth is AuthType.PRIVATE and not identity.may_access(entry.namespace):
        raise Forbidden(
            f"endpoint {entry.key} is private: user {identity.user} is neither {entry.namespace} "
            f"nor a member of it"
        )
    return identity
