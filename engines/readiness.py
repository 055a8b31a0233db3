"""Waiting for a new replica: its health route polled quickly until 200, its container watched
for an early exit, under a start-up deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from .runtime import ReplicaInfo, ReplicaStatus, Runtime, RuntimeError_

# Fast enough that a replica serves within ~0.15 s of being ready (held requests wait on this),
# slow enough to be negligible load on an engine that is loading weights.
POLL_INTERVAL_S = 0.15
LOG_LINES_ON_FAILURE = 20


class ReplicaStartFailed(RuntimeError_):
    """The container exited during start-up."""

    def __init__(self, replica_id: str, exit_code: int | None, last_lines: list[str]):
        tail = "\n".join(last_lines) or "(no output)"
        super().__init__("start", f"replica {replica_id}", f"exited with code {exit_code} during start-up; last log lines:\n{tail}")
        self.exit_code = exit_code
        self.last_lines = last_lines


class ReplicaStartTimeout(RuntimeError_):
    pass


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
    """The replica, once `GET {address}{health_route}` answers 200."""
    give_up = clock() + deadline_s
    info = replica
    while True:
        if info.address is not None:
            try:
                url = f"http://{info.address}{info.health_route}"
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=max(poll_interval_s * 10, 1.0))) as r:
                    if r.status == 200:
                        return info
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet
        info = await runtime.inspect(replica.replica_id)
        if info.status is ReplicaStatus.EXITED:
            lines = await runtime.logs(replica.replica_id, tail=LOG_LINES_ON_FAILURE)
            raise ReplicaStartFailed(replica.replica_id, info.exit_code, lines)
        if clock() >= give_up:
            raise ReplicaStartTimeout(
                "start", f"replica {replica.replica_id}",
                f"{info.health_route} did not answer 200 within {deadline_s:g} s",
            )
        await sleep(poll_interval_s)
