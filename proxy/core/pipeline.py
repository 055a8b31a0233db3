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

Rate limits (proxy/core/limits.py, ratelimit.py) are checked once the caller is known and the
request checked, before it counts: a request over a limit is a 429 and counts nowhere; an
admitted one holds its share of the in-flight limits (a `Held`) until `finish`, held through a
cold start included. In a worker process the main process keeps the counters (`remote_rate`);
with no limit configured (`limits.active` False) the path is as it was without them.

A request carrying the control plane's probe secret in `X-Endpointd-Probe` is routed and
authenticated like any other but is not demand: it is in no count, and it neither wakes nor
holds an endpoint (no ready replica: 503 at once), so probing can never undo a scale-to-zero.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from functools import partial
from typing import Any

from .auth import Lookup, TokenCache, authorize, bearer_token, check_access
from .balancer import pick
from .config import ProxyConfig
from .control import ControlPlane, Replica, RouteEntry, hash_token
from .engine_routes import closed_route, control_route_refusal
from .errors import PayloadTooLarge, ProxyError, RateLimited
from .hold import ReadinessGate, parse_scale_up_timeout, refuse_unless_serving
from .limits import LimitTable
from .metrics import NO_ENDPOINT, NO_REPLICA, Family, ProxyMetrics
from .pending import PendingCounter, Ticket
from .ratelimit import Held, RateLimiter
from .routing import Route

PROBE_HEADER = "X-Endpointd-Probe"
# Takes a request's share of the rate limits, or raises RateLimited (before it is counted).
Take = Callable[[], Held]


class Admission:
    """An admitted request: its endpoint, the path its replica sees, its pending ticket and what it
    holds of the rate limits (None: no limit counts it)."""

    __slots__ = ("_pipeline", "entry", "upstream_path", "ticket", "_started", "_held")

    def __init__(self, pipeline: Pipeline, entry: RouteEntry, upstream_path: str, ticket: Ticket, started: float,
                 held: Held | None = None):
        self._pipeline = pipeline
        self.entry = entry
        self.upstream_path = upstream_path
        self.ticket = ticket
        self._started = started
        self._held = held

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
        if self._held is not None:
            self._held.release()
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
        self.limits = LimitTable.from_config(config)
        self.limiter = RateLimiter(self.limits, clock)
        # In a worker process: the main process's limiter, asked over the channel (proxy/workers/);
        # it raises RateLimited, or gives what the request holds until it ends.
        self.remote_rate: Callable[[str, str | None], Awaitable[Held]] | None = None
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
                                          demand, started, authorization)
            hold_s = self._checked(entry, route.upstream_path, scale_up_timeout, content_length)
            return self._limited(entry, route.upstream_path, hold_s, demand, started,
                                 authorization if verdict is not None else None)
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

    def _limited(self, entry: RouteEntry, upstream_path: str, hold_s: float | None, demand: bool, started: float,
                 authorization: str | None) -> Admission | Coroutine[Any, Any, Admission]:
        """The rate limits, then count the request. `authorization`: the header of a caller
        identified by it (None for a public endpoint: no token limit applies)."""
        limits = self.limits
        if not (demand and limits.active):  # no limit anywhere; a probe is never limited
            return self._counted(entry, upstream_path, hold_s, demand, started, None)
        token = bearer_token(authorization) if limits.token else None
        key = hash_token(token) if token is not None else None
        if not limits.applies(entry.namespace, key is not None):
            return self._counted(entry, upstream_path, hold_s, demand, started, None)
        if self.remote_rate is not None:
            return self._after_rate(self.remote_rate, key, entry, upstream_path, hold_s, started)
        return self._counted(entry, upstream_path, hold_s, demand, started,
                             partial(self.limiter.take, entry.namespace, key))

    def _counted(self, entry: RouteEntry, upstream_path: str, hold_s: float | None, demand: bool,
                 started: float, take: Take | None) -> Admission | Coroutine[Any, Any, Admission]:
        """Take the request's share of the rate limits (`take`, None: none) and count it; admitted at
        once when a replica is ready, else the hold."""
        if not entry.replicas:
            return self._held(entry, upstream_path, hold_s, demand, started, take)
        held = take() if take is not None else None
        ticket = self.counter.track(entry.key, demand).__enter__()
        try:
            refuse_unless_serving(entry)
        except BaseException:
            ticket.close()
            if held is not None:
                held.release()
            raise
        return Admission(self, entry, upstream_path, ticket, started, held)

    async def _after_rate(self, ask: Callable[[str, str | None], Awaitable[Held]], token: str | None,
                          entry: RouteEntry, upstream_path: str, hold_s: float | None, started: float) -> Admission:
        """The rest of `admit` once the main process's limiter has admitted the request (a worker)."""
        try:
            held = await ask(entry.namespace, token)  # refused: RateLimited; cancelled: released by `ask`
            admitted = self._counted(entry, upstream_path, hold_s, True, started, lambda: held)
        except ProxyError as error:
            self.refused(error, entry.key)
            raise
        return admitted if isinstance(admitted, Admission) else await admitted

    async def _after_lookup(self, lookup: Lookup, entry: RouteEntry, upstream_path: str, scale_up_timeout: str | None,
                            content_length: int | None, demand: bool, started: float,
                            authorization: str | None) -> Admission:
        """The rest of `admit` once the store has said who the token is."""
        try:
            check_access(entry, await lookup.identity(self.tokens))
            hold_s = self._checked(entry, upstream_path, scale_up_timeout, content_length)
            admitted = self._limited(entry, upstream_path, hold_s, demand, started, authorization)
        except ProxyError as error:
            self.refused(error, entry.key)
            raise
        return admitted if isinstance(admitted, Admission) else await admitted

    async def _held(self, entry: RouteEntry, upstream_path: str, hold_s: float | None, demand: bool,
                    started: float, take: Take | None) -> Admission:
        """No replica is ready: take the request's share of the rate limits and count it (here, so
        that a wait cancelled before it ran holds nothing), wake the endpoint and hold it, or refuse
        it (proxy/core/hold.py). Held, it counts against the in-flight limits."""
        key = entry.key
        try:
            held = take() if take is not None else None
        except ProxyError as error:
            self.refused(error, key)
            raise
        ticket = self.counter.track(key, demand).__enter__()
        try:
            entry = await self.gate.ready_entry(entry, hold_s, demand=ticket.demand)
            self.metrics.cold_start_wait.labels(key).observe(self.clock() - started)
        except BaseException as error:
            ticket.close()
            if held is not None:
                held.release()
            if isinstance(error, ProxyError):
                self.refused(error, key)
            raise
        return Admission(self, entry, upstream_path, ticket, started, held)

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
        if isinstance(error, RateLimited):
            self.metrics.rate_limited.labels(error.namespace, error.limit).inc()
