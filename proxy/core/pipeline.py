"""The decisions on a request's path — authenticate, count, hold or refuse, pick a replica — free
of any HTTP framework.

    admitted = pipeline.admit(route, ...)      # raises ProxyError to refuse
    if not isinstance(admitted, Admission):    # a token lookup or a cold start: a coroutine
        admitted = await admitted
    try:
        replica = admission.choose()           # least pending; counted against it
        ... forward, stream back ...
    finally:
        admission.finish(status)               # uncount, record metrics

One admission: decided at once when it can be (a ready replica, and a public endpoint or a cached
token verdict), else the coroutine that finishes it (waits for the store's verdict on the token, or
holds through a cold start) without deciding anything twice. Each request is counted once, when
it is admitted or starts to wait. The body's size limit is here too (`over_limit`), for the size
announced and for the bytes as they arrive.

A request carrying the control plane's probe secret in `X-Endpointd-Probe` is routed and
authenticated like any other but is not demand: it is in no count, and it neither wakes nor
holds an endpoint (no ready replica: 503 at once), so probing can never undo a scale-to-zero.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

from .auth import Lookup, TokenCache, authorize, check_access
from .balancer import pick
from .config import ProxyConfig
from .control import ControlPlane, Replica, RouteEntry
from .engine_routes import closed_route, control_route_refusal
from .errors import PayloadTooLarge, ProxyError
from .hold import ReadinessGate, parse_scale_up_timeout, refuse_unless_serving
from .metrics import NO_ENDPOINT, NO_REPLICA, Family, ProxyMetrics
from .pending import PendingCounter, Ticket
from .routing import Route

PROBE_HEADER = "X-Endpointd-Probe"


class Admission:
    """An admitted request: its endpoint, the path its replica sees, and its pending ticket."""

    __slots__ = ("_pipeline", "entry", "upstream_path", "ticket", "_started")

    def __init__(self, pipeline: Pipeline, entry: RouteEntry, upstream_path: str, ticket: Ticket, started: float):
        self._pipeline = pipeline
        self.entry = entry
        self.upstream_path = upstream_path
        self.ticket = ticket
        self._started = started

    def choose(self, exclude: Collection[str] = ()) -> Replica | None:
        key = self.entry.key
        replica = pick(self.entry.replicas, self._pipeline.counter.local_loads(key), exclude)
        if replica is not None:
            self.ticket.bind(replica.id)
        return replica

    def refresh(self) -> None:
        """Take the endpoint's current replicas (for a retry after a failed connection)."""
        current = self._pipeline.control.lookup(self.entry.namespace, self.entry.name)
        if current is not None:
            self.entry = current

    def refused(self, error: ProxyError) -> None:
        """Count an error the proxy answered itself after admitting the request (502, 504, 413)."""
        self._pipeline.metrics.refused.labels(self.entry.key, str(error.status), error.cause).inc()

    def finish(self, code: int | str) -> None:
        pipeline = self._pipeline
        key = self.entry.key
        pipeline.metrics.answered(
            key, self.ticket.replica_id or NO_REPLICA, str(code), pipeline.clock() - self._started, self.ticket.demand
        )
        self.ticket.close()
        if self.ticket.demand:  # a probe took no held request's place, so frees none
            pipeline.gate.finished(key)


class Pipeline:
    def __init__(
        self,
        config: ProxyConfig,
        control: ControlPlane,
        clock: Callable[[], float] = time.monotonic,
        probe_secret: str | None = None,
    ):
        """`probe_secret`: the value of `X-Endpointd-Probe` that marks the control plane's own
        probes; None: no request is a probe."""
        if probe_secret == "":
            raise ValueError("probe_secret must not be empty: an empty header would match it")
        self._probe_secret = probe_secret.encode() if probe_secret is not None else None
        self.config = config
        self.control = control
        self.clock = clock
        self.counter = PendingCounter()
        self.tokens = TokenCache(control, config.token_cache_ttl_s, clock)
        self.gate = ReadinessGate(
            control,
            max_held_per_endpoint=config.max_held_per_endpoint,
            retry_after_s=config.retry_after_s,
            wake_retry_s=config.wake_retry_s,
            implicit_hold_s=config.implicit_hold_ms / 1000,
            release_per_replica=config.held_release_per_replica,
            clock=clock,
        )
        self.metrics = ProxyMetrics(self.counter, lambda: self.gate.held)
        # The workers' metric families, when this process has workers (proxy/workers/hub.py):
        # /metrics merges them with this process's.
        self.remote_families: Callable[[], Awaitable[list[list[Family]]]] | None = None

    def admit(
        self,
        route: Route,
        *,
        authorization: str | None,
        scale_up_timeout: str | None,
        content_length: int | None,
        probe: str | None = None,
    ) -> Admission | Coroutine[Any, Any, Admission]:
        """Admit a request for `route` (proxy/core/routing.py `route`): the Admission when it can
        be decided at once, else a coroutine to await for it. Raises ProxyError to refuse (so does
        the coroutine); every refusal is counted. `probe` is the request's X-Endpointd-Probe
        header, if any."""
        started = self.clock()
        key = NO_ENDPOINT
        try:
            if route.entry is None:
                assert route.refusal is not None
                raise route.refusal
            entry = route.entry
            key = entry.key
            demand = probe is None or not self._is_probe(probe)
            verdict = authorize(entry, authorization, self.tokens)
            if isinstance(verdict, Lookup):
                return self._after_lookup(verdict, entry, route.upstream_path, scale_up_timeout, content_length,
                                          demand, started)
            hold_s = self._checked(entry, route.upstream_path, scale_up_timeout, content_length)
            return self._counted(entry, route.upstream_path, hold_s, demand, started)
        except ProxyError as error:
            self.refused(error, key)
            raise

    def _checked(self, entry: RouteEntry, upstream_path: str, scale_up_timeout: str | None,
                 content_length: int | None) -> float | None:
        """What is checked once the caller may call (so that one who may not learns nothing of
        the engine), before the request counts or wakes anything: the path is none of the
        engine's control routes, the hold time asked for, the body's declared size. The hold
        seconds."""
        if closed_route(entry.engine, upstream_path):
            raise control_route_refusal()
        hold_s = parse_scale_up_timeout(scale_up_timeout, self.config.max_scale_up_timeout_s)
        too_large = self.over_limit(content_length or 0)
        if too_large is not None:
            raise too_large
        return hold_s

    def _counted(self, entry: RouteEntry, upstream_path: str, hold_s: float | None, demand: bool,
                 started: float) -> Admission | Coroutine[Any, Any, Admission]:
        """Count the request; admitted at once when a replica is ready, else the hold."""
        if not entry.replicas:
            return self._held(entry, upstream_path, hold_s, demand, started)
        ticket = self.counter.track(entry.key, demand).__enter__()
        try:
            refuse_unless_serving(entry)
        except BaseException:
            ticket.close()
            raise
        return Admission(self, entry, upstream_path, ticket, started)

    async def _after_lookup(self, lookup: Lookup, entry: RouteEntry, upstream_path: str, scale_up_timeout: str | None,
                            content_length: int | None, demand: bool, started: float) -> Admission:
        """The rest of `admit` once the store has said who the token is."""
        try:
            check_access(entry, await lookup.identity(self.tokens))
            hold_s = self._checked(entry, upstream_path, scale_up_timeout, content_length)
            admitted = self._counted(entry, upstream_path, hold_s, demand, started)
        except ProxyError as error:
            self.refused(error, entry.key)
            raise
        return admitted if isinstance(admitted, Admission) else await admitted

    async def _held(self, entry: RouteEntry, upstream_path: str, hold_s: float | None, demand: bool,
                    started: float) -> Admission:
        """No replica is ready: count the request (here, so that a wait cancelled before it ran
        counts nothing), wake the endpoint and hold it, or refuse it (proxy/core/hold.py)."""
        key = entry.key
        ticket = self.counter.track(key, demand).__enter__()
        try:
            entry = await self.gate.ready_entry(entry, hold_s, demand=ticket.demand)
            self.metrics.cold_start_wait.labels(key).observe(self.clock() - started)
        except BaseException as error:
            ticket.close()
            if isinstance(error, ProxyError):
                self.refused(error, key)
            raise
        return Admission(self, entry, upstream_path, ticket, started)

    @property
    def probe_secret(self) -> str | None:
        return self._probe_secret.decode() if self._probe_secret is not None else None

    def _is_probe(self, value: str) -> bool:
        secret = self._probe_secret
        # Constant time, so the secret cannot be found byte by byte. surrogatepass: a header that
        # was not valid UTF-8 still encodes, and matches nothing.
        return secret is not None and hmac.compare_digest(value.encode(errors="surrogatepass"), secret)

    def over_limit(self, body_bytes: int) -> PayloadTooLarge | None:
        """The refusal of a request body of `body_bytes` (announced, or received so far), or None
        while it is within `max_body_bytes`."""
        if body_bytes <= self.config.max_body_bytes:
            return None
        return PayloadTooLarge(
            f"the request body is larger than {self.config.max_body_bytes} bytes, the limit of this server"
        )

    def refused(self, error: ProxyError, key: str = NO_ENDPOINT) -> None:
        """Count a request the proxy answered itself (before admission: not pending)."""
        code = str(error.status)
        self.metrics.refused.labels(key, code, error.cause).inc()
        self.metrics.answered(key, NO_REPLICA, code, None)
