"""The fake runtime behaves like the Docker one where the control plane can tell, and
`readiness.wait_ready` against it with an in-process health server."""

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engines import readiness
from engines.fake import FakeRuntime
from engines.runtime import (
    ContainerSpec,
    EndpointKey,
    EventKind,
    ImagePullFailed,
    ReplicaNotFound,
    ReplicaStatus,
    RuntimeError_,
    Usage,
)

KEY = EndpointKey("acme", "e1")
SPEC = ContainerSpec(image="img:1")


async def test_start_list_stop_and_recorded_calls():
    rt = FakeRuntime(images={"img:1"})
    await rt.ensure_image("img:1")
    info = await rt.start(KEY, "r1", "2", SPEC)
    other = await rt.start(EndpointKey("acme", "e2"), "r2", "1", SPEC)
    assert (info.container_name, info.status, info.revision) == ("endpointd-acme-e1-r1", ReplicaStatus.RUNNING, "2")
    assert info.address != other.address and info.address.startswith("127.0.0.1:")
    assert [i.replica_id for i in await rt.list(KEY)] == ["r1"]
    assert [i.replica_id for i in await rt.list()] == ["r1", "r2"]
    await rt.stop("r1", 5)
    assert await rt.list(KEY) == []
    assert rt.calls == [("ensure_image", "img:1"), ("start", "r1"), ("start", "r2"), ("stop", "r1")]


async def test_errors_are_the_docker_runtimes():
    rt = FakeRuntime(images={"img:1"})
    with pytest.raises(ImagePullFailed, match="pull image img:2"):
        await rt.ensure_image("img:2")
    with pytest.raises(RuntimeError_, match="start container endpointd-acme-e1-r1: No such image: img:2"):
        await rt.start(KEY, "r1", "1", ContainerSpec(image="img:2"))
    await rt.start(KEY, "r1", "1", SPEC)
    with pytest.raises(RuntimeError_, match="already exists"):
        await rt.start(KEY, "r1", "1", SPEC)
    rt.fail_next_start("out of disk")
    with pytest.raises(RuntimeError_, match="start container endpointd-acme-e1-r2: out of disk"):
        await rt.start(KEY, "r2", "1", SPEC)
    await rt.start(KEY, "r2", "1", SPEC)  # only the next start failed
    for operation, call in [
        ("stop container", lambda: rt.stop("r9", 1)),
        ("inspect", lambda: rt.inspect("r9")),
        ("logs", lambda: rt.logs("r9")),
        ("stats", lambda: rt.usage("r9")),
        ("follow logs", lambda: anext(rt.follow_logs("r9"))),
    ]:
        with pytest.raises(ReplicaNotFound, match=f"{operation} replica r9"):
            await call()


async def test_a_slow_start_waits_on_the_injected_sleep():
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    rt = FakeRuntime(sleep=sleep)
    rt.start_delay_s = 30
    await rt.start(KEY, "r1", "1", SPEC)
    assert slept == [30]


async def test_a_kill_is_a_death_event_to_every_listener_and_stop_is_one_too():
    rt = FakeRuntime()
    await rt.start(KEY, "r1", "1", SPEC)
    first, second = rt.events(), rt.events()
    rt.kill("r1", 137, "Killed")
    for events in (first, second):
        event = await anext(events)
        assert (event.kind, event.replica_id, event.endpoint, event.exit_code) == (EventKind.DIED, "r1", KEY, 137)
    info = await rt.inspect("r1")
    assert (info.status, info.exit_code, info.address) == (ReplicaStatus.EXITED, 137, None)
    assert (await rt.logs("r1", tail=1)) == ["Killed"]

    await rt.start(KEY, "r2", "1", SPEC)
    await rt.stop("r2", 1)
    assert ((await anext(first)).replica_id, (await anext(second)).exit_code) == ("r2", 0)


async def test_follow_logs_gives_the_tail_then_new_lines_until_the_container_exits():
    rt = FakeRuntime()
    await rt.start(KEY, "r1", "1", SPEC)
    rt.write_log("r1", "a", "b")
    followed = rt.follow_logs("r1", tail=1)
    assert await anext(followed) == "b"
    pending = asyncio.ensure_future(anext(followed))
    rt.write_log("r1", "c")
    assert await pending == "c"
    rt.kill("r1", 1, "d")
    assert [line async for line in followed] == ["d"]


async def test_usage_is_what_the_test_sets():
    rt = FakeRuntime()
    await rt.start(KEY, "r1", "1", SPEC)
    assert await rt.usage("r1") == Usage(0.0, 0, None)
    rt.set_usage("r1", Usage(85.0, 1 << 30, 2 << 30))
    assert (await rt.usage("r1")).cpu_percent == 85.0


# --- readiness ---------------------------------------------------------------------------------


@pytest.fixture
async def health_server():
    """A health route answering `state["status"]`, on 127.0.0.1."""
    state = {"status": 503}

    async def health(request):
        return web.Response(status=state["status"])

    app = web.Application()
    app.router.add_get("/health", health)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, state
    await server.close()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_wait_ready_polls_until_200(health_server, session):
    server, state = health_server
    rt = FakeRuntime(address=lambda replica_id: f"127.0.0.1:{server.port}")
    info = await rt.start(KEY, "r1", "1", SPEC)
    polls = []

    async def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 3:
            state["status"] = 200

    ready = await readiness.wait_ready(rt, info, session=session, deadline_s=60, sleep=sleep)
    assert ready.replica_id == "r1" and polls == [readiness.POLL_INTERVAL_S] * 3


async def test_an_exit_during_start_up_names_the_exit_code_and_the_last_lines(health_server, session):
    server, _ = health_server
    rt = FakeRuntime(address=lambda replica_id: f"127.0.0.1:{server.port}")
    rt.exit_next_start(3, "loading weights", "CUDA out of memory")
    info = await rt.start(KEY, "r1", "1", SPEC)
    with pytest.raises(readiness.ReplicaStartFailed, match="(?s)start replica r1: exited with code 3.*CUDA out of memory") as failure:
        await readiness.wait_ready(rt, info, session=session, deadline_s=60)
    assert failure.value.exit_code == 3
    assert failure.value.last_lines[-2:] == ["loading weights", "CUDA out of memory"]


async def test_an_exit_while_polling_is_noticed(health_server, session):
    server, _ = health_server
    rt = FakeRuntime(address=lambda replica_id: f"127.0.0.1:{server.port}")
    info = await rt.start(KEY, "r1", "1", SPEC)

    async def sleep(seconds):
        rt.kill("r1", 137)

    with pytest.raises(readiness.ReplicaStartFailed, match="exited with code 137"):
        await readiness.wait_ready(rt, info, session=session, deadline_s=60, sleep=sleep)


async def test_wait_ready_gives_up_at_the_deadline(health_server, session):
    server, _ = health_server
    rt = FakeRuntime(address=lambda replica_id: f"127.0.0.1:{server.port}")
    info = await rt.start(KEY, "r1", "1", ContainerSpec(image="x", health_route="/health"))
    now = [0.0]

    async def sleep(seconds):
        now[0] += seconds

    with pytest.raises(readiness.ReplicaStartTimeout, match="start replica r1: /health did not answer 200 within 1 s"):
        await readiness.wait_ready(rt, info, session=session, deadline_s=1, clock=lambda: now[0], sleep=sleep)
    assert 1 <= now[0] < 1 + readiness.POLL_INTERVAL_S * 2
