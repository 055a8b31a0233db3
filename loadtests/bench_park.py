"""Wake tiers on the echo engine (issue 20): how long a replica takes to serve when its container
is made and started (`Runtime.start`, the cold tier), when it was made before and never started
(a pre-created container: `Runtime.unpark` of a CREATED one, i.e. `docker start`), and when it ran
and was parked (`Runtime.unpark` of a stopped one). Does a pre-created container pay off as the
parked tier of an endpoint that never ran?

# .venv/bin/python loadtests/bench_park.py [--n N]

Each round measures the three once, interleaved (so a busy moment of the machine falls on all
three alike), after one warm-up round that is not counted. Per tier: the runtime call (start or
unpark: create/start and the inspect that reads the published port) and ready (that, then
`GET /health` 200 polled every 5 ms with readiness.wait_ready; the echo engine answers it as soon
as it listens, so this is the port accepting connections). The pre-created container is made by
the `docker` CLI (only engines/docker.py may talk to Docker's API) with what `create_config` asks
for (labels, the endpoint's network, the port on 127.0.0.1, the same confinement); making it is not
timed. Figures, not assertions; p95 of 10 is the slowest. Its own instance and endpoint, removed
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_proxy import percentile  # noqa: E402 - beside this file

from engines import readiness  # noqa: E402
from engines.docker import NO_NEW_PRIVILEGES, PIDS_LIMIT, DockerRuntime  # noqa: E402
from engines.images import ECHO_IMAGE  # noqa: E402
from engines.runtime import (  # noqa: E402
    DEFAULT_CAPABILITIES,
    LABEL_HEALTH_ROUTE,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_PORT,
    LABEL_REPLICA,
    LABEL_REVISION,
    ContainerSpec,
    EndpointKey,
    ReplicaInfo,
    container_name,
    network_name,
)

DOCKER = "/usr/bin/docker"
SPEC = ContainerSpec(image=ECHO_IMAGE)
READY_DEADLINE_S = 60.0
POLL_S = 0.005  # finer than endpointd's 20 ms fast poll: the figures' resolution
PARK_GRACE_S = 10.0
TIERS = ("start (create + start)", "pre-created: unpark (docker start)", "parked: unpark (docker start)")


def docker_create(instance: str, key: EndpointKey, replica_id: str) -> None:
    """A replica's container as `create_config` makes it, made and not started, by the CLI."""
    labels = {
        LABEL_MANAGED: "true", LABEL_INSTANCE: instance, LABEL_NAMESPACE: key.namespace, LABEL_NAME: key.name,
        LABEL_REPLICA: replica_id, LABEL_REVISION: "1", LABEL_PORT: str(SPEC.port), LABEL_HEALTH_ROUTE: SPEC.health_route,
    }
    subprocess.run([
        DOCKER, "create", "--name", container_name(key, replica_id), *(f"--label={k}={v}" for k, v in labels.items()),
        "--network", network_name(instance, key), "--publish", f"127.0.0.1::{SPEC.port}", "--restart", "no",
        "--security-opt", NO_NEW_PRIVILEGES, "--cap-drop", "ALL", *(f"--cap-add={c}" for c in DEFAULT_CAPABILITIES),
        "--pids-limit", str(PIDS_LIMIT), "--ipc", "private", SPEC.image,
    ], check=True, capture_output=True)


async def timed(call: Callable[[], Awaitable[ReplicaInfo]], rt: DockerRuntime,
                session: aiohttp.ClientSession) -> tuple[float, float]:
    """Seconds to the runtime call's return, and to /health 200."""
    began = time.perf_counter()
    info = await call()
    returned = time.perf_counter()
    await readiness.wait_ready(rt, info, session=session, deadline_s=READY_DEADLINE_S, schedule=lambda _: POLL_S)
    return returned - began, time.perf_counter() - began


async def one_round(rt: DockerRuntime, instance: str, key: EndpointKey,
                    session: aiohttp.ClientSession) -> list[tuple[float, float]]:
    """The three tiers once each; every replica removed after it is measured."""
    cold, pre, parked = (f"r{uuid.uuid4().hex[:8]}" for _ in range(3))
    # The parked one first ran and served, untimed.
    await timed(lambda: rt.start(key, parked, "1", SPEC), rt, session)
    await rt.park(parked, PARK_GRACE_S)
    figures = [await timed(lambda: rt.start(key, cold, "1", SPEC), rt, session)]
    docker_create(instance, key, pre)  # on the network the starts made
    figures.append(await timed(lambda: rt.unpark(pre), rt, session))
    figures.append(await timed(lambda: rt.unpark(parked), rt, session))
    for replica_id in (cold, pre, parked):
        await rt.stop(replica_id, PARK_GRACE_S)
    return figures


def row(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    return f"{name:<42} {percentile(ordered, 0.5) * 1e3:8.1f} {percentile(ordered, 0.95) * 1e3:8.1f}"


async def main(n: int) -> None:
    instance = f"bench-park-{uuid.uuid4().hex[:8]}"
    key = EndpointKey(instance, "echo")
    rt = DockerRuntime(instance=instance)
    rounds: list[list[tuple[float, float]]] = []
    try:
        async with aiohttp.ClientSession() as session:
            await one_round(rt, instance, key, session)  # warm-up: the image's files in the page cache
            for _ in range(n):
                rounds.append(await one_round(rt, instance, key, session))
    finally:
        for info in await rt.list():
            await rt.stop(info.replica_id, 0)
        await rt.remove_network(key)
        await rt.close()
    print(f"echo engine ({ECHO_IMAGE}), {n} rounds after a warm-up; milliseconds")
    print(f"{'':<42} {'p50':>8} {'p95':>8}")
    for index, tier in enumerate(TIERS):
        print(row(f"{tier}: call", [r[index][0] for r in rounds]))
        print(row(f"{tier}: ready", [r[index][1] for r in rounds]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10, help="rounds counted (default 10)")
    asyncio.run(main(parser.parse_args().n))
