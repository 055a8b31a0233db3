"""The Docker runtime against the real Docker engine, with the echo engine image."""

import asyncio
import time

import aiohttp
import pytest

from engines import readiness
from engines.docker import DockerRuntime
from engines.images import ECHO_IMAGE
from engines.runtime import ContainerSpec, EndpointKey, EventKind, ImagePullFailed, ReplicaNotFound, ReplicaStatus

KEY = EndpointKey("test-ns", "echo")


def spec(**env) -> ContainerSpec:
    return ContainerSpec(image=ECHO_IMAGE, env={k: str(v) for k, v in env.items()}, secret_env={"TOKEN": "s3cret"})


async def test_start_ready_serve_logs_usage_stop(docker_runtime):
    info = await docker_runtime.start(KEY, "r1", "7", spec(ECHO_STARTUP_DELAY_S=0.3))
    assert info.container_name == "endpointd-test-ns-echo-r1"
    assert info.address.startswith("127.0.0.1:")  # published on loopback only
    async with aiohttp.ClientSession() as session:
        info = await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=30)
        async with session.post(f"http://{info.address}/generate", json={"inputs": "real docker"}) as r:
            assert (await r.json()) == {"generated_text": "real docker "}
    lines = await docker_runtime.logs("r1")
    assert "echo engine ready" in lines and "POST /generate 200" in lines
    usage = await docker_runtime.usage("r1")
    assert usage.memory_bytes > 0 and usage.cpu_percent >= 0
    started = time.monotonic()
    await docker_runtime.stop("r1", grace_s=10)
    assert time.monotonic() - started < 10  # the engine stops on SIGTERM, long before SIGKILL
    assert await docker_runtime.list(KEY) == []
    with pytest.raises(ReplicaNotFound, match="replica r1"):
        await docker_runtime.inspect("r1")


async def test_a_new_runtime_adopts_running_replicas_from_labels(docker_runtime):
    info = await docker_runtime.start(KEY, "r2", "3", spec())
    fresh = DockerRuntime()
    try:
        found = await fresh.list(KEY)
        assert [(f.replica_id, f.revision, f.address, f.status) for f in found] == [
            ("r2", "3", info.address, ReplicaStatus.RUNNING)
        ]
        assert found[0].health_route == "/health"
    finally:
        await fresh.close()


async def test_crash_is_reported_as_a_death_event(docker_runtime):
    events = docker_runtime.events()
    first = asyncio.ensure_future(events.__anext__())
    info = await docker_runtime.start(KEY, "r3", "1", spec(ECHO_CRASH_AFTER_REQUESTS=1))
    async with aiohttp.ClientSession() as session:
        info = await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=30)
        async with session.post(f"http://{info.address}/generate", json={"inputs": "last words"}) as r:
            assert r.status == 200
    event = await asyncio.wait_for(first, 30)
    assert (event.kind, event.replica_id, event.endpoint, event.exit_code) == (EventKind.DIED, "r3", KEY, 3)
    await events.aclose()


async def test_exit_during_start_up_names_the_code_and_the_last_lines(docker_runtime):
    info = await docker_runtime.start(KEY, "r4", "1", spec(ECHO_STARTUP_DELAY_S=-1))  # invalid: exits 2
    async with aiohttp.ClientSession() as session:
        with pytest.raises(readiness.ReplicaStartFailed) as failure:
            await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=30)
    assert failure.value.exit_code == 2
    assert "ECHO_STARTUP_DELAY_S='-1' is invalid" in str(failure.value)


async def test_never_ready_times_out(docker_runtime):
    info = await docker_runtime.start(KEY, "r5", "1", spec(ECHO_NEVER_READY=1))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(readiness.ReplicaStartTimeout, match="/health did not answer 200 within 1 s"):
            await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=1)


async def test_pull_failure_names_the_image(docker_runtime):
    with pytest.raises(ImagePullFailed, match="pull image example.invalid/nothing:1"):
        await docker_runtime.ensure_image("example.invalid/nothing:1")
    await docker_runtime.ensure_image(ECHO_IMAGE)  # present locally: no pull


async def test_docker_errors_name_the_operation_and_container(docker_runtime):
    from engines.runtime import RuntimeError_

    with pytest.raises(RuntimeError_, match="start container endpointd-test-ns-echo-r6: .*no-such-image"):
        await docker_runtime.start(KEY, "r6", "1", ContainerSpec(image="no-such-image:never"))
    with pytest.raises(ReplicaNotFound, match="stop container|find replica r404"):
        await docker_runtime.stop("r404", 1)
