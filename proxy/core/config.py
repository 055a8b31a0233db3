"""The proxy's configuration: one frozen object; ranges live in field metadata, checked at load.

Client connections (see proxy/management/connections.py), each default with its reason beside it:

    header_read_timeout_s   30     a connection must deliver a complete request head within this
                                   many seconds of opening (or of its first byte after a response):
                                   closes slowloris and connections that never send anything; also
                                   bounds a TLS handshake and the read of a small request body (408)
    keepalive_timeout_s     75     an idle keep-alive connection is closed after this many seconds
    max_client_connections  0      open client connections at most on the main listener; 0 =
                                   automatic: half of the process's soft RLIMIT_NOFILE less a
                                   reserve of 64 (see `connection_cap`); beyond it new connections
                                   get a 503 and are closed at once, with a rate-limited log line

The server (see proxy/server.py):

    workers                 0      data-plane processes on the port (SO_REUSEPORT), the control
                                   plane in the first; 0 = one per core this process may run on, at
                                   most AUTO_WORKERS_MAX; always 1 with TLS (for now: a TLS
                                   connection cannot be passed to the main process once a worker
                                   has terminated it)

The data plane has one HTTP server, the raw one (uvloop protocols and httptools, proxy/raw/); the
management API and the dashboard are on aiohttp, which the raw server hands their connections to.
`http` was the choice of an aiohttp data plane; it is retired (REMOVED: a config file or
environment that still sets it fails at start, saying so).

Rate limits (see proxy/core/ratelimit.py), each 0 = unlimited, the default; an admin overrides
a namespace's two (`PUT /v2/ratelimits/{ns}`):

    token_rpm, token_concurrent            requests per minute and in flight, per bearer token
    namespace_rpm, namespace_concurrent    the same per namespace (an endpoint's owner), summed
                                           over its endpoints and callers

Listeners (see proxy/server.py):

    metrics_port            0      a second listener serving only /metrics (same token rule);
                                   0 = none
    tls_cert, tls_key       ""     PEM certificate chain and private key: both set, every listener
                                   speaks HTTPS; both empty, plain HTTP; one alone is an error
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

# File descriptors kept out of the automatic connection cap: the listeners, the store, the Docker
# socket, log files, the upstream pool's idle sockets, the interpreter's own.
RESERVED_FDS = 64
MAX_CONNECTIONS = 1_000_000
# The automatic worker count's cap: each worker holds a copy of the route table and a channel the
# main process writes every route change to and reads counts from every 20 ms; past 8 the main
# process's share of that work grows while a proxy that needs more than 8 cores is rare.
AUTO_WORKERS_MAX = 8
MAX_WORKERS = 64
MAX_RPM = 10_000_000  # far beyond what one host proxies in a minute
MAX_CONCURRENT = 1_000_000  # MAX_CONNECTIONS: one request in flight per connection


T = TypeVar("T")


def setting(default: T, *, min: float | None = None, max: float | None = None, help: str) -> T:  # noqa: A002 - names read well at call sites
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
    retry_after_s: int = setting(5, min=1, max=3600, help="Retry-After of a cold-start 503 before any wake was observed, and its cap after")
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
    implicit_hold_ms: int = setting(
        # A sleeping engine wakes in well under a second to a few seconds (vLLM's level-1 sleep:
        # 0.26-2.9 s on a GPU); beyond this the request is answered 503 like a cold start's.
        10_000, min=0, max=600_000,
        help="how long a request is held, without X-Scale-Up-Timeout, while its endpoint's sleeping replicas wake; 0: not held (503)",
    )
    wake_retry_s: float = setting(
        10.0, min=0.1, max=3600.0, help="ask the control plane again if a wake produced no replica by then",
    )
    drain_timeout_s: float = setting(
        # Kubernetes' default termination grace period: a SIGKILL follows it.
        30.0, min=0.0, max=3600.0,
        help="on SIGTERM, time given to requests in flight before they are cut; the process exits "
        "within it plus a few seconds for cleanup",
    )
    header_read_timeout_s: float = setting(
        # nginx's client_header_timeout is 60 s; 30 s is still far beyond any real client (a head
        # is one packet) while freeing slowloris sockets twice as fast.
        30.0, min=0.1, max=3600.0,
        help="time a connection has to send a complete request head (from its opening, or from the "
        "first byte after a response) before it is closed; also bounds the TLS handshake and the "
        "read of a small request body (408)",
    )
    keepalive_timeout_s: float = setting(
        # nginx's keepalive_timeout default; longer than the 60 s idle of common client pools
        # (so the server is rarely the one to close a pooled connection under a client's request).
        75.0, min=0.1, max=86_400.0, help="an idle keep-alive client connection is closed after this long",
    )
    max_client_connections: int = setting(
        # 0 = automatic, from the soft RLIMIT_NOFILE at start: each proxied request holds a client
        # and an upstream socket, so half of what is left after a reserve.
        0, min=0, max=MAX_CONNECTIONS,
        help="open client connections at most on the main listener (the metrics listener has its own "
        "16); beyond it new ones get a 503 and are closed at once (0: half the soft open-files limit, "
        "less a reserve of 64)",
    )
    metrics_port: int = setting(
        0, min=0, max=65535,
        help="a second listener, on the same host, serving only /metrics (same token rule); 0: none",
    )
    tls_cert: str = setting(
        "", help="PEM certificate chain file: with tls_key, every listener serves HTTPS",
    )
    tls_key: str = setting("", help="PEM private key file of tls_cert")
    workers: int = setting(
        0, min=0, max=MAX_WORKERS,
        help="data-plane processes sharing the port (SO_REUSEPORT), the control plane in the first; "
        f"0: one per core, at most {AUTO_WORKERS_MAX}; 1 with TLS",
    )
    token_rpm: int = setting(
        0, min=0, max=MAX_RPM, help="requests per minute per bearer token (429 beyond); 0: unlimited",
    )
    token_concurrent: int = setting(
        0, min=0, max=MAX_CONCURRENT,
        help="requests in flight at once per bearer token, held ones included (429 beyond); 0: unlimited",
    )
    namespace_rpm: int = setting(
        0, min=0, max=MAX_RPM,
        help="requests per minute to a namespace's endpoints, unless an admin set its own (429 beyond); 0: unlimited",
    )
    namespace_concurrent: int = setting(
        0, min=0, max=MAX_CONCURRENT,
        help="requests in flight at once to a namespace's endpoints, held ones included, unless an admin set "
        "its own (429 beyond); 0: unlimited",
    )

    # Keys that were settings once: a config file or environment that still sets one fails at start
    # with this sentence (autoscaler/model/settings.py `load`), rather than being ignored.
    REMOVED: ClassVar[dict[str, str]] = {
        "http": "the aiohttp data plane was retired; the raw server (proxy/raw/) is the only one: remove the setting",
    }


def worker_count(config: ProxyConfig) -> int:
    """How many processes serve the data plane, this one included."""
    if config.tls_cert and config.tls_key:
        return 1
    if config.workers:
        return config.workers
    return max(1, min(AUTO_WORKERS_MAX, len(os.sched_getaffinity(0))))


def connection_cap(config: ProxyConfig) -> int:
    """`max_client_connections`, or when 0 the automatic cap from the soft RLIMIT_NOFILE: e.g.
    1024 -> 480, 256 -> 96, unlimited -> 1,000,000."""
    if config.max_client_connections:
        return config.max_client_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, (soft - RESERVED_FDS) // 2))
