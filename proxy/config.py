"""The proxy's configuration: one frozen object; ranges live in field metadata, checked at load."""

from __future__ import annotations

from dataclasses import dataclass, field


def setting(default, *, min=None, max=None, help: str):  # noqa: A002 - names read well at call sites
    return field(default=default, metadata={"min": min, "max": max, "help": help})


@dataclass(frozen=True)
class ProxyConfig:
    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(8080, min=1, max=65535, help="port to listen on")
    max_held_per_endpoint: int = setting(
        10_000, min=1, max=1_000_000,
        help="requests held per endpoint during a cold start; beyond it, 503 at once",
    )
    max_scale_up_timeout_s: float = setting(
        600.0, min=0.001, max=3600.0, help="cap on the X-Scale-Up-Timeout a caller may ask for",
    )
    retry_after_s: int = setting(5, min=1, max=3600, help="Retry-After sent with a cold-start 503")
    held_release_per_replica: int = setting(
        # Enough to keep a batching engine busy; small enough that a burst held through a cold
        # start spreads over the replicas that come up after the first one.
        32, min=1, max=100_000,
        help="held requests released per replica as it becomes ready while more are starting; "
        "then one per completed request (all at once when no more are starting)",
    )
    max_body_bytes: int = setting(
        # Large enough for long audio uploads; bodies are streamed, so this bounds nothing in memory.
        1 << 30, min=1, max=1 << 40, help="largest request body accepted (413 beyond)",
    )
    upstream_connect_timeout_s: float = setting(
        5.0, min=0.01, max=300.0, help="time to open a connection to a replica before trying another",
    )
    upstream_idle_timeout_s: float = setting(
        # Measured between bytes, not over the whole response: a 10-minute stream passes as long
        # as the engine keeps sending. 300 s covers a long prefill on a slow GPU.
        300.0, min=0.01, max=86_400.0, help="silence from a replica before the request fails (504)",
    )
    upstream_response_start_timeout_s: float = setting(
        # Measured from sending the request (a streamed upload included) to the response headers;
        # after them only the idle timeout applies, so long streams pass. Shorter than the idle
        # timeout, which alone kept a hung replica's callers 300 s in silence; still generous,
        # because a long generation that is not streamed sends its headers only when it is done.
        120.0, min=0.01, max=86_400.0,
        help="time a replica may take to send its response headers before the request fails (504)",
    )
    token_cache_ttl_s: float = setting(
        5.0, min=0.0, max=300.0, help="how long a token verdict is cached; a revoked token stops within it",
    )
    wake_retry_s: float = setting(
        10.0, min=0.1, max=3600.0, help="ask the control plane again if a wake produced no replica by then",
    )
    drain_timeout_s: float = setting(
        30.0, min=0.0, max=3600.0, help="on SIGTERM, time given to requests in flight before exit",
    )
