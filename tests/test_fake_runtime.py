"""The fake runtime behaves like the real one where the controller can tell, and readiness
against it with an in-process health server."""

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engines import readiness
from engines.fake import FakeRuntime
from engines.runtime import ContainerSpec, EndpointKey, EventKind, ImagePullFailed, ReplicaNotFound, RuntimeError_

KEY = EndpointKey("acme", "e1")


async def test_start_list_stop_and_errors():
    rt = FakeRuntime(images={"img:1"})
    info = await rt.start(KEY, "r1", "2", ContainerSpec(image="img:1"))
    assert info.container_name == "endpointd-acme-e1-r1" and info.address.startswith("127.0.0.1:")
    assert [i.replica_id for i in await rt.list(KEY)] == ["r1"]
    await rt.ensure_image("img:1")
    with pytest.raises(ImagePullFailed, match="img:2"):
        await rt.ensure_image("img:2")
    await rt.stop("r1", 1)
    with pytest.raises(ReplicaNotFound):
        await rt.stop("r1", 1)
    rt.fail_next_start = "out of disk"
    with pytest.raises(RuntimeError_, match="start container endpointd-acme-e1-r2: out of disk"):
        await rt.start(KEY, "r2", "2", ContainerSpec(image="img:1"))


async def test_exit_emits_a_death_event():
    rt = FakeRuntime()
    await rt.start(KEY, "r1", "1", ContainerSpec(image="x"))
    rt.exit("r1", 137, "killed")
    event = await rt.events().__anext__()
    assert (event.kind, event.replica_id, event.exit_code) == (EventKind.DIED, "r1", 137)
    assert (await rt.logs("r1"))[-1] == "killed"


@pytest.fixture
async def health_server():
    state = {"status": 503}

    async def health(request):
        return web.Response(status=state["status"])

    app = web.Application()
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, state
    await server.close()


async def test_wait_ready_polls_until_200(health_server):
    server, state = health_server
    rt = FakeRuntime(address=lambda rid: f"127.0.0.1:{server.port}")
    info = await rt.start(KEY, "r1", "1", ContainerSpec(image="x"))
    polls = []

    async def sleep(s):
        polls.append(s)
        if len(polls) == 3:
            state["status"] = 200

    async with aiohttp.ClientSession() as session:
        ready = await readiness.wait_ready(rt, info, session=session, deadline_s=60, sleep=sleep)
    assert ready.replica_id == "r1" and polls == [readiness.POLL_INTERVAL_S] * 3


async def test_wait_ready_reports_an_exit_with_code_and_logs(health_server):
    server, _ = health_server
    rt = FakeRuntime(address=lambda rid: f"127.0.0.1:{server.port}")
    info = await rt.start(KEY, "r1", "1", ContainerSpec(image="x"))

    async def sleep(s):
        rt.exit("r1", 3, "Traceback: CUDA out of memory")

    async with aiohttp.ClientSession() as session:
        with pytest.raises(readiness.ReplicaStartFailed, match="(?s)exited with code 3.*CUDA out of memory"):
            await readiness.wait_ready(rt, info, session=session, deadline_s=60, sleep=sleep)


async def test_wait_ready_gives_up_at_the_deadline(health_server):
    server, _ = health_server
    rt = FakeRuntime(address=lambda rid: f"127.0.0.1:{server.port}")
    info = await rt.start(KEY, "r1", "1", ContainerSpec(image="x", health_route="/health"))
    now = [0.0]

    async def sleep(s):
        now[0] += s

    async with aiohttp.ClientSession() as session:
        with pytest.raises(readiness.ReplicaStartTimeout, match="did not answer 200 within 1 s"):
            await readiness.wait_ready(rt, info, session=session, deadline_s=1, clock=lambda: now[0], sleep=sleep)
    assert now[0] >= 1
