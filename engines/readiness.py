"""Waiting for a new replica: its health route polled until 200 (or, for an image with no health
route, its port polled until it accepts connections), its container watched for an early exit,
under a start-up deadline."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable

import aiohttp

from .runtime import ContainerStatus, ReplicaInfo, Runtime, RuntimeFailure

# Fast enough that a replica serves within ~0.15 s of being ready (held requests wait on this),
# slow enough to be negligible load on an engine that is loading weights.
POLL_INTERVAL_S = 0.15
# For the first FAST_POLL_FOR_S of a start the health route is polled every FAST_POLL_S, so that
# an engine that comes up quickly (llama.cpp with a small model: ~0.5 s) releases the requests held
# for it within ~20 ms, not ~150 ms. Bounded: at most 100 probes in those 2 s, each a GET of a
# health route that answers without touching the model (or a refused connect before the server
# listens): under a millisecond of an engine's CPU each, so well below 5% of one core for 2 s,
# while the engine spends those seconds reading weights. The container itself is still inspected
# (a Docker API call, to notice an early exit) only every POLL_INTERVAL_S.
FAST_POLL_S = 0.02
FAST_POLL_FOR_S = 2.0


def poll_interval(elapsed_s: float) -> float:
    """The pause before the next probe, `elapsed_s` seconds into a start: FAST_POLL_S at first,
    POLL_INTERVAL_S after FAST_POLL_FOR_S."""
    return FAST_POLL_S if elapsed_s < FAST_POLL_FOR_S else POLL_INTERVAL_S
# One probe may take this long: an engine busy loading weights can answer /health slowly, and a
# probe that hangs must not eat the whole start-up deadline.
PROBE_TIMEOUT_S = 2.0
# Enough of the log to show the error an engine printed before exiting (a traceback's tail).
LOG_LINES_ON_FAILURE = 20
# A TCP probe's connection is held this long before it counts as accepted. Docker's userland proxy
# (docker-proxy, which serves ports published on 127.0.0.1) accepts at once whether or not anything
# listens in the container, then closes the connection when its own connect is refused: an end of
# file within this time is "not listening yet". A server waits for the request and sends nothing.
TCP_SETTLE_S = 0.25


class ReplicaStartFailed(RuntimeFailure):
    """The container exited during start-up."""

    def __init__(self, replica_id: str, exit_code: int | None, last_lines: list[str]) -> None:
        tail = "\n".join(last_lines) or "(no output)"
        super().__init__(
            "start", f"replica {replica_id}", f"exited with code {exit_code} during start-up; last log lines:\n{tail}"
        )
        self.exit_code = exit_code
        self.last_lines = last_lines


class ReplicaStartTimeout(RuntimeFailure):
    """The health route did not answer 200 before the start-up deadline."""

    def __init__(self, replica_id: str, health_route: str, deadline_s: float, tcp: bool = False) -> None:
        what = "its port did not accept connections" if tcp else f"{health_route} did not answer 200"
        super().__init__("start", f"replica {replica_id}", f"{what} within {deadline_s:g} s")


def auth_headers(replica: ReplicaInfo) -> dict[str, str]:
    """The replica's engine API key as a bearer token, for a probe: most engines answer their
    health route without it, but a user's health route may be any route (and older TEI guards
    /health too). None without a key."""
    return {"Authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}


async def accepts_connections(address: str, settle_s: float = TCP_SETTLE_S, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something listens at `address` ("host:port"): a connection that is accepted and not
    closed within `settle_s` (see TCP_SETTLE_S), or that the server starts to talk on."""
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except (OSError, TimeoutError, ValueError):
        return False
    try:
        try:
            async with asyncio.timeout(settle_s):
                data = await reader.read(1)
        except TimeoutError:
            return True  # open and quiet: a server waiting for its request
        except OSError:
            return False  # reset
        return data != b""  # end of file: a proxy with nothing behind it; bytes: a talking server
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def wait_ready(
    runtime: Runtime,
    replica: ReplicaInfo,
    *,
    session: aiohttp.ClientSession,
    deadline_s: float,
    schedule: Callable[[float], float] = poll_interval,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    tcp: bool = False,
) -> ReplicaInfo:
    """The replica, once `GET http://{address}{health_route}` (with its API key) answers 200; with
    `tcp`, or when the replica has no health route (a custom image that declares none: the
    reference treats it as ready at start), once its port accepts connections.

    Probes follow `schedule(seconds since the call)` (fast at first, see poll_interval); the
    container is inspected at most every POLL_INTERVAL_S. Raises ReplicaStartFailed (exit code and
    last log lines) if its container exits first, and ReplicaStartTimeout once `deadline_s` has
    passed.
    """
    tcp = tcp or not replica.health_route  # no health route: its port is the sign of life
    began = clock()
    give_up = began + deadline_s
    inspected = -math.inf
    probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    info = replica
    while True:
        if info.address is not None and tcp:
            if await accepts_connections(info.address):
                return info
        elif info.address is not None:
            try:
                url = f"http://{info.address}{info.health_route}"
                async with session.get(url, timeout=probe_timeout, headers=auth_headers(info)) as response:
                    if response.status == 200:
                        return info
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet, or busy: the next round tells
        now = clock()
        if info.address is None or now - inspected >= POLL_INTERVAL_S:
            inspected = now
            info = await runtime.inspect(replica.replica_id)
            if info.status is ContainerStatus.EXITED:
                lines = await runtime.logs(replica.replica_id, tail=LOG_LINES_ON_FAILURE)
                raise ReplicaStartFailed(replica.replica_id, info.exit_code, lines)
        if now >= give_up:
            raise ReplicaStartTimeout(replica.replica_id, info.health_route, deadline_s, tcp=tcp)
        await sleep(schedule(now - began))
