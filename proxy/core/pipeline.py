"""The decisions on a request's path — route, authenticate, count, hold or refuse, pick a replica —
free of any HTTP framework, so the server under them can be swapped for a faster one.

    admission = await pipeline.admit(...)      # raises ProxyError to refuse
    try:
        replica = admission.choose()           # least pending; counted against it
        ... forward, stream back ...
    finally:
        admission.finish(status)               # uncount, record metrics

A request carrying the control plane's probe secret in `X-Endpointd-Probe` is routed and
authenticated like any other but is not demand: it is in no count, and it neither wakes nor
holds an endpoint (no ready replica: 503 at once), so probing can never undo a scale-to-zero.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Collection

from .auth import NEEDS_LOOKUP, TokenCache, authorize, authorize_now
from .balancer import pick
from .config import ProxyConfig
from .control import ControlPlane, Replica, RouteEntry
from .errors import PayloadTooLarge, ProxyError
from .hold import ReadinessGate, parse_scale_up_timeout, refuse_unless_serving
from .metrics import NO_ENDPOINT, NO_REPLICA, ProxyMetrics
from .pending import PendingCounter, Ticket
from .routing import resolve

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
            release_per_replica=config.held_release_per_replica,
            clock=clock,
        )
        self.metrics = ProxyMetrics(self.counter, lambda: self.gate.held)
        # The workers' metric families, when this process has workers (proxy/workers/hub.py):
        # /metrics merges them with this process's.
        self.remote_families: Callable[[], Awaitable[list]] | None = None

    async def admit(
        self,
        *,
        host: str | None,
        raw_path: str,
        authorization: str | None,
        scale_up_timeout: str | None,
        content_length: int | None,
        probe: str | None = None,
    ) -> Admission:
        """`probe` is the request's X-Endpointd-Probe header, if any."""
        started = self.clock()
        key = NO_ENDPOINT
        try:
            entry, upstream_path = resolve(self.control, host, raw_path)
            key = entry.key
            await authorize(entry, authorization, self.tokens)
            hold_s, ticket = self._checked_ticket(key, scale_up_timeout, content_length, probe)
            try:
                if entry.replicas:
                    refuse_unless_serving(entry)
                else:
                    entry = await self.gate.ready_entry(entry, hold_s, demand=ticket.demand)
                    self.metrics.cold_start_wait.labels(key).observe(self.clock() - started)
            except BaseException:
                ticket.close()
                raise
        except ProxyError as error:
            self.refused(error, key)
            raise
        return Admission(self, entry, upstream_path, ticket, started)

    def admit_now(
        self,
        *,
        host: str | None,
        raw_path: str,
        authorization: str | None,
        scale_up_timeout: str | None,
        content_length: int | None,
        probe: str | None = None,
    ) -> Admission | None:
        """`admit` without waiting, for the hot path (no coroutine per request): the same verdict
        and the same counts when it can be reached at once, a ready replica and a public endpoint
        or a cached token; None when only `admit` can tell (a token lookup, a cold start), which
        the caller then awaits. Raises ProxyError to refuse, as `admit` does."""
        started = self.clock()
        key = NO_ENDPOINT
        try:
            entry, upstream_path = resolve(self.control, host, raw_path)
            if not entry.replicas:
                return None
            key = entry.key
            if authorize_now(entry, authorization, self.tokens) is NEEDS_LOOKUP:
                return None
            _, ticket = self._checked_ticket(key, scale_up_timeout, content_length, probe)
            try:
                refuse_unless_serving(entry)
            except BaseException:
                ticket.close()
                raise
        except ProxyError as error:
            self.refused(error, key)
            raise
        return Admission(self, entry, upstream_path, ticket, started)

    def _checked_ticket(self, key: str, scale_up_timeout: str | None, content_length: int | None,
                        probe: str | None):
        """The checks `admit` and `admit_now` share once the caller may call: the hold time asked
        for, the body's declared size; then the request is counted. (hold seconds, its ticket)."""
        hold_s = parse_scale_up_timeout(scale_up_timeout, self.config.max_scale_up_timeout_s)
        if content_length is not None and content_length > self.config.max_body_bytes:
            raise self.too_large()
        demand = probe is None or not self._is_probe(probe)
        return hold_s, self.counter.track(key, demand).__enter__()

    @property
    def probe_secret(self) -> str | None:
        return self._probe_secret.decode() if self._probe_secret is not None else None

    def _is_probe(self, value: str) -> bool:
        secret = self._probe_secret
        # Constant time, so the secret cannot be found byte by byte. surrogatepass: a header that
        # was not valid UTF-8 still encodes, and matches nothing.
        return secret is not None and hmac.compare_digest(value.encode(errors="surrogatepass"), secret)

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than {self.config.max_body_bytes} bytes, the limit of this server"
        )

    def refused(self, error: ProxyError, key: str = NO_ENDPOINT) -> None:
        """Count a request the proxy answered itself (before admission: not pending)."""
        code = str(error.status)
        self.metrics.refused.labels(key, code, error.cause).inc()
        self.metrics.answered(key, NO_REPLICA, code, None)
