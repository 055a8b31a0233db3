"""What the proxy needs from the control plane: routing entries, token checks, wake-ups.

The proxy sees the control plane only through `ControlPlane`. `InMemoryControlPlane` implements it
for tests and for a static configuration (`endpointd proxy --routes FILE`); the real control plane
implements the same protocol over its store.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from .engine_routes import EngineKind


class AuthType(enum.StrEnum):
    PUBLIC = "public"
    AUTHENTICATED = "authenticated"
    PRIVATE = "private"


class RouteState(enum.StrEnum):
    """What the proxy must do with a request for an endpoint: the proxy's share of the endpoint's
    State (autoscaler/model/state.py), set by its owner: PAUSED for paused, FAILED for failed with
    no replica ready, SERVING for every other state (a cold one is woken)."""

    SERVING = "serving"  # forward to a ready replica, or wake the endpoint and hold
    PAUSED = "paused"  # refuse: a user paused it, only `resume` brings it back
    FAILED = "failed"  # refuse: it cannot start; waking would not help


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    address: str  # "127.0.0.1:PORT"
    # The engine's own API key: sent upstream as `Authorization: Bearer <api_key>` (the caller's
    # Authorization never is). A secret: kept out of repr, so out of logs and tracebacks.
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    namespace: str
    name: str
    auth: AuthType
    state: RouteState = RouteState.SERVING
    replicas: tuple[Replica, ...] = ()  # ready and taking new requests; draining ones are left out
    # Replicas starting that will take requests soon. 0 means `replicas` is all there will be, so
    # requests held through a cold start are all released to them at once.
    coming: int = 0
    domain: str | None = None  # Host-based routing when set
    message: str = ""  # shown to callers when the endpoint refuses (failed)
    # Wall-clock time since which the endpoint is at zero (a user's scale-to-zero, an idle
    # scale-down) with no wake after it; None while awake. A new value each time it returns to
    # zero: the proxy wakes it again for any request that arrives after that time.
    asleep_since: float | None = None
    # Why no replica can be placed now (the host's CPUs, memory or GPUs are held by others), when
    # the endpoint has none at all: a wake would only wait, so callers are answered at once.
    no_capacity: str = ""
    # What serves it: the engine's control routes are refused (proxy/core/engine_routes.py).
    engine: EngineKind = EngineKind.OTHER
    # The endpoint's observed wake time (the median of its last wakes, in seconds), set by its
    # owner; None before any wake was measured. A cold-start 503's Retry-After is made of it.
    wake_s: float | None = None
    # Replicas whose engine is asleep (the sleeping tier: process alive, model memory released),
    # out of `replicas` until woken. A request that finds none ready but some asleep is held
    # without asking (`implicit_hold_ms`): its owner wakes them, and no 503 is answered.
    sleeping: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    orgs: frozenset[str] = frozenset()
    is_admin: bool = False
    # What the token may do beyond its user's rights, e.g. "metrics": scrape /metrics.
    scopes: frozenset[str] = frozenset()

    def may_access(self, namespace: str) -> bool:
        return self.is_admin or self.user == namespace or namespace in self.orgs

    def has_scope(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes


Listener = Callable[[RouteEntry], None]


class ControlPlane(Protocol):
    def lookup(self, namespace: str, name: str) -> RouteEntry | None:
        """The routing entry of an endpoint; synchronous because it is on every request's path."""

    def lookup_host(self, host: str) -> RouteEntry | None:
        """The entry whose route domain is the Host header `host` (any port, any case)."""

    async def verify_token(self, token: str) -> Identity | None:
        """The identity behind a bearer token, or None for an unknown or revoked one."""

    def wake(self, namespace: str, name: str) -> None:
        """Ask for at least one replica. Returns at once; readiness arrives through a listener."""

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(entry)` whenever an endpoint's routing entry changes."""


def strip_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        return host[: host.find("]") + 1]
    return host.rpartition(":")[0] if ":" in host else host


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RouteTable:
    """Routing entries in memory, with Host lookup and change notification: the part of a
    control plane the proxy reads on every request."""

    def __init__(self) -> None:
        self.entries: dict[str, RouteEntry] = {}
        self._by_host: dict[str, RouteEntry] = {}
        self._listeners: list[Listener] = []

    def put(self, entry: RouteEntry) -> None:
        old = self.entries.get(entry.key)
        if old is not None and old.domain:
            self._by_host.pop(old.domain, None)
        self.entries[entry.key] = entry
        if entry.domain:
            self._by_host[entry.domain] = entry
        self._notify(entry)

    def remove(self, namespace: str, name: str) -> None:
        entry = self.entries.pop(f"{namespace}/{name}", None)
        if entry is None:
            return
        if entry.domain:
            self._by_host.pop(entry.domain, None)
        # Listeners see it refuse: held requests for a deleted endpoint must not wait for nothing.
        self._notify(replace(entry, replicas=(), state=RouteState.FAILED, message="the endpoint was deleted"))

    def set_replicas(self, namespace: str, name: str, replicas: Iterable[Replica]) -> None:
        self.put(replace(self.entries[f"{namespace}/{name}"], replicas=tuple(replicas)))

    def _notify(self, entry: RouteEntry) -> None:
        for listener in list(self._listeners):
            listener(entry)

    def lookup(self, namespace: str, name: str) -> RouteEntry | None:
        return self.entries.get(f"{namespace}/{name}")

    def lookup_host(self, host: str) -> RouteEntry | None:
        if not self._by_host:  # the common case, on every request: no endpoint has a domain
            return None
        return self._by_host.get(strip_port(host).lower())

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)


class InMemoryControlPlane(RouteTable):
    """A whole control plane in memory: filled by tests or by a static routes file."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, Identity] = {}  # sha256(token) -> identity
        self.wakes: list[str] = []  # endpoint keys, in the order wakes were asked

    def add_token(self, token: str, identity: Identity) -> None:
        self.tokens[hash_token(token)] = identity

    def revoke_token(self, token: str) -> None:
        self.tokens.pop(hash_token(token), None)

    async def verify_token(self, token: str) -> Identity | None:
        # Looked up by SHA-256 digest: the token itself is never compared, so no comparison can
        # leak it byte by byte.
        return self.tokens.get(hash_token(token))

    def wake(self, namespace: str, name: str) -> None:
        self.wakes.append(f"{namespace}/{name}")
