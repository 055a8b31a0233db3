"""Waiting for a new replica: its health route polled until 200, its container watched for an
early exit, under a start-up deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from .runtime import ReplicaInfo, ReplicaStatus, Runtime, RuntimeError_

# Fast enough that a replica serves within ~0.15 s of being ready (held requests wait on this),
# slow enough to be negligible load on an engine that is loading weights.
POLL_INTERVAL_S = 0.15
# One probe may take this long: an engine busy loading weights can answer /health slowly, and a
# probe that hangs must not eat the whole start-up deadline.
PROBE_TIMEOUT_S = 2.0
# Enough of the log to show the error an engine printed before exiting (a traceback's tail).
LOG_LINES_ON_FAILURE = 20


class ReplicaStartFailed(RuntimeError_):
    """The container exited during start-up."""

    def __init__(self, replica_id: str, exit_code: int | None, last_lines: list[str]) -> None:
        tail = "\n".join(last_lines) or "(no output)"
        super().__init__(
            "start", f"replica {replica_id}", f"exited with code {exit_code} during start-up; last log lines:\n{tail}"
        )
        self.exit_code = exit_code
        self.last_lines = last_lines


class ReplicaStartTimeout(RuntimeError_):
    """The health route did not answer 200 before the start-up deadline."""

    def __init__(self, replica_id: str, health_route: str, deadline_s: float) -> None:
        super().__init__("start", f"replica {replica_id}", f"{health_route} did not answer 200 within {deadline_s:g} s")


def auth_headers(replica: ReplicaInfo) -> dict[str, str]:
    """The replica's engine API key as a bearer token, for a probe: most engines answer their
    health route without it, but a user's health route may be any route (and older TEI guards
    /health too). None without a key."""
    return {"Authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}


async def wait_ready(
    runtime: Runtime,
    replica: ReplicaInfo,
    *,
    session: aiohttp.ClientSession,
    deadline_s: float,
    poll_interval_s: float = POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ReplicaInfo:
    """The replica, once `GET http://{address}{health_route}` (with its API key) answers 200.

    Raises ReplicaStartFailed (exit code and last log lines) if its container exits first, and
    ReplicaStartTimeout once `deadline_s` has passed.
    """
    give_up = clock() + deadline_s
    probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    info = replica
    while True:
        if info.address is not None:
            try:
                url = f"http://{info.address}{info.health_route}"
                async with session.get(url, timeout=probe_timeout, headers=auth_headers(info)) as response:
                    if response.status == 200:
                        return info
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet, or busy: the next round tells
        info = await runtime.inspect(replica.replica_id)
        if info.status is ReplicaStatus.EXITED:
            lines = await runtime.logs(replica.replica_id, tail=LOG_LINES_ON_FAILURE)
            raise ReplicaStartFailed(replica.replica_id, info.exit_code, lines)
        if clock() >= give_up:
            raise ReplicaStartTimeout(replica.replica_id, info.health_route, deadline_s)
        await sleep(poll_interval_s)
