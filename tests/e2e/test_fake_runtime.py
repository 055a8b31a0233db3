"""The fake runtime behaves like the Docker one where the control plane can tell: first what it
models, one test each; then a table of the shared behaviours run against both the fake and the
real Docker engine (the `docker` rows); then `readiness.wait_ready` against the fake with an
in-process health server."""

import asyncio
import uuid

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engines import readiness
from engines.docker import DockerRuntime
from engines.fake import FakeEngine, FakeRuntime
from engines.images import ECHO_IMAGE
from engines.runtime import (
    ContainerSpec,
    ContainerStatus,
    EndpointKey,
    EventKind,
    ImagePullFailed,
    ReplicaInfo,
    ReplicaNotFound,
    RuntimeFailure,
    Usage,
    network_name,
)
from tests.docker_fixtures import (
    docker_cli,
    docker_inspect,
    engine_containers,
    engine_networks,
)

KEY = EndpointKey("acme", "e1")
SPEC = ContainerSpec(image="img:1")


async def test_start_list_stop_and_recorded_calls():
    rt = FakeRuntime(images={"img:1"})
    await rt.ensure_image("img:1")
    info = await rt.start(KEY, "r1", "2", SPEC)
    other = await rt.start(EndpointKey("acme", "e2"), "r2", "1", SPEC)
    assert (info.container_name, info.status, info.revision) == ("endpointd-acme-e1-r1", ContainerStatus.RUNNING, "2")
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
    with pytest.raises(RuntimeFailure, match="start container endpointd-acme-e1-r1: No such image: img:2"):
        await rt.start(KEY, "r1", "1", ContainerSpec(image="img:2"))
    await rt.start(KEY, "r1", "1", SPEC)
    with pytest.raises(RuntimeFailure, match="already exists"):
        await rt.start(KEY, "r1", "1", SPEC)
    rt.fail_next_start("out of disk")
    with pytest.raises(RuntimeFailure, match="start container endpointd-acme-e1-r2: out of disk"):
        await rt.start(KEY, "r2", "1", SPEC)
    await rt.start(KEY, "r2", "1", SPEC)  # only the next start failed
    for operation, call in [
        ("stop container", lambda: rt.stop("r9", 1)),
        ("park container", lambda: rt.park("r9", 1)),
        ("unpark container", lambda: rt.unpark("r9")),
        ("inspect", lambda: rt.inspect("r9")),
        ("logs", lambda: rt.logs("r9")),
        ("stats", lambda: rt.usage("r9")),
        ("follow logs", lambda: anext(rt.follow_logs("r9"))),
    ]:
        with pytest.raises(ReplicaNotFound, match=f"{operation} replica r9"):
            await call()


class Sleeps:
    """An injected sleep that returns only when the test says so, recording what was asked."""

    def __init__(self):
        self.asked: list[float] = []
        self.wake = asyncio.Event()

    async def __call__(self, seconds):
        self.asked.append(seconds)
        await self.wake.wait()


async def test_a_slow_start_waits_on_the_injected_sleep():
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    rt = FakeRuntime(sleep=sleep)
    rt.start_delay_s = 30
    await rt.start(KEY, "r1", "1", SPEC)
    assert slept == [30]


async def test_a_start_is_a_created_container_without_address_until_its_delay_ends():
    sleeps = Sleeps()
    rt = FakeRuntime(sleep=sleeps)
    rt.start_delay_s = 5
    starting = asyncio.create_task(rt.start(KEY, "r1", "1", ContainerSpec(image="img:1", gpu_device_ids=("GPU-a",))))
    await until_asked(sleeps)
    [created] = await rt.list(KEY)
    assert (created.status, created.address, created.gpus) == (ContainerStatus.CREATED, None, ("GPU-a",))
    sleeps.wake.set()
    info = await starting
    assert (info.status, info.container_id, info.gpus) == (ContainerStatus.RUNNING, created.container_id, ("GPU-a",))
    assert info.address.startswith("127.0.0.1:") and await rt.list(KEY) == [info]


async def until_asked(sleeps: Sleeps) -> None:
    """Until the code under test waits in the injected sleep (a condition, not a delay)."""
    async with asyncio.timeout(5):
        while not sleeps.asked:
            await asyncio.sleep(0)


@pytest.mark.parametrize("point", ["before it runs", "while created"])
async def test_a_cancelled_start_removes_its_container_before_cancelled_error(point):
    sleeps = Sleeps()
    rt = FakeRuntime(sleep=sleeps)
    rt.start_delay_s = 5
    events = rt.events()
    starting = asyncio.create_task(rt.start(KEY, "r1", "1", SPEC))
    if point == "while created":
        await until_asked(sleeps)
        assert [i.status for i in await rt.list()] == [ContainerStatus.CREATED]
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert await rt.list() == [] and rt.engine.containers == {}
    # It never ran, so it never died: the first death is a later container's.
    rt.start_delay_s = 0
    await rt.start(KEY, "r2", "1", SPEC)
    rt.kill("r2", 1)
    assert (await anext(events)).replica_id == "r2"


async def test_a_failed_start_fails_after_its_delay_and_removes_its_container():
    sleeps = Sleeps()
    rt = FakeRuntime(sleep=sleeps)
    rt.start_delay_s = 5
    rt.fail_next_start("could not select device driver")
    starting = asyncio.create_task(rt.start(KEY, "r1", "1", SPEC))
    await until_asked(sleeps)
    assert len(await rt.list()) == 1  # created: Docker refuses at start, not at create
    sleeps.wake.set()
    with pytest.raises(RuntimeFailure, match="start container endpointd-acme-e1-r1: could not select device driver"):
        await starting
    assert await rt.list() == []


async def test_a_container_removed_while_created_fails_its_start():
    sleeps = Sleeps()
    rt = FakeRuntime(sleep=sleeps)
    rt.start_delay_s = 5
    starting = asyncio.create_task(rt.start(KEY, "r1", "1", SPEC))
    await until_asked(sleeps)
    await rt.stop("r1", 1)  # a sweep of containers nothing owns, say
    sleeps.wake.set()
    with pytest.raises(RuntimeFailure, match="start container endpointd-acme-e1-r1: No such container"):
        await starting
    assert await rt.list() == []


async def test_stop_sends_sigterm_and_an_engine_that_ignores_it_is_killed_after_the_grace_period():
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    rt = FakeRuntime(sleep=sleep)
    events = rt.events()
    await rt.start(KEY, "polite", "1", SPEC)
    await rt.stop("polite", 30)
    assert (slept, (await anext(events)).exit_code) == ([], 0)  # exits at once on SIGTERM
    await rt.start(KEY, "stubborn", "1", SPEC)
    rt.ignore_sigterm("stubborn")
    await rt.stop("stubborn", 30)
    assert (slept, (await anext(events)).exit_code) == ([30], 137)
    assert await rt.list() == []


async def test_a_stop_of_an_exited_container_only_removes_it():
    rt = FakeRuntime()
    events = rt.events()
    await rt.start(KEY, "r1", "1", SPEC)
    rt.kill("r1", 3)
    await rt.stop("r1", 1)
    assert await rt.list() == []
    assert (await anext(events)).exit_code == 3
    with pytest.raises(asyncio.TimeoutError):  # no second death: the queue is empty now
        await asyncio.wait_for(anext(events), 0)


async def test_a_hung_replica_keeps_running_answers_nothing_and_is_still_stopped():
    rt = FakeRuntime()
    await rt.start(KEY, "r1", "1", SPEC)
    assert not rt.is_hung("r1")
    rt.hang("r1")
    assert rt.is_hung("r1") and (await rt.inspect("r1")).status is ContainerStatus.RUNNING
    await rt.stop("r1", 1)
    assert await rt.list() == []


async def test_runtimes_of_one_engine_see_only_their_own_instance():
    engine = FakeEngine()
    a, b = FakeRuntime(engine=engine, instance="a"), FakeRuntime(engine=engine, instance="b")
    everything = FakeRuntime(engine=engine)  # no instance: every container of the engine, as Docker's
    await a.start(KEY, "r1", "1", SPEC)
    await b.start(EndpointKey("acme", "e2"), "r1", "1", SPEC)  # the same replica id, another name
    assert [i.endpoint for i in await a.list()] == [KEY] and list(a.containers) == ["r1"]
    assert [i.endpoint.name for i in await everything.list()] == ["e1", "e2"]
    with pytest.raises(RuntimeFailure, match="name endpointd-acme-e1-r1 is already in use"):
        await FakeRuntime(engine=engine, instance="c").start(KEY, "r1", "1", SPEC)  # names are engine-wide, as in Docker
    for helper in (b.kill, b.hang, b.ignore_sigterm, b.is_hung):
        with pytest.raises(ReplicaNotFound):
            helper("r2")
    assert len({c.info.address for c in engine.containers.values()}) == 2  # one port counter per engine


async def test_helpers_of_an_absent_replica_raise_replica_not_found():
    rt = FakeRuntime()
    for operation, call in [
        ("kill", lambda: rt.kill("r9")),
        ("hang", lambda: rt.hang("r9")),
        ("probe", lambda: rt.is_hung("r9")),
        ("ignore SIGTERM", lambda: rt.ignore_sigterm("r9")),
        ("write log", lambda: rt.write_log("r9", "x")),
    ]:
        with pytest.raises(ReplicaNotFound, match=f"{operation} replica r9"):
            call()


async def test_a_kill_is_a_death_event_to_every_listener_and_stop_is_one_too():
    rt = FakeRuntime()
    await rt.start(KEY, "r1", "1", SPEC)
    first, second = rt.events(), rt.events()
    rt.kill("r1", 137, "Killed")
    for events in (first, second):
        event = await anext(events)
        assert (event.kind, event.replica_id, event.endpoint, event.exit_code) == (EventKind.DIED, "r1", KEY, 137)
    info = await rt.inspect("r1")
    assert (info.status, info.exit_code, info.address) == (ContainerStatus.EXITED, 137, None)
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


async def test_a_park_keeps_the_container_and_an_unpark_runs_it_again_at_a_new_address():
    rt = FakeRuntime()
    events = rt.events()
    info = await rt.start(KEY, "r1", "1", SPEC)
    await rt.park("r1", 30)
    assert (await anext(events)).exit_code == 0  # a park is a death on the stream, as a stop is
    parked = await rt.inspect("r1")
    assert (parked.status, parked.address, parked.exit_code) == (ContainerStatus.EXITED, None, 0)
    started = []
    back = await rt.unpark("r1", on_started=lambda: started.append(rt.containers["r1"].info.status))
    assert started == [ContainerStatus.RUNNING]
    assert (back.status, back.exit_code, back.container_id) == (ContainerStatus.RUNNING, None, info.container_id)
    assert back.address.startswith("127.0.0.1:") and back.address != info.address
    assert await rt.list(KEY) == [back] and await rt.logs("r1") == ["img:1 started", "img:1 started"]
    assert await rt.unpark("r1") == back  # running already: as it is
    assert rt.calls[-4:] == [("start", "r1"), ("park", "r1"), ("unpark", "r1"), ("unpark", "r1")]


async def test_a_park_of_a_container_that_is_not_running_leaves_it_as_it_is():
    rt = FakeRuntime()
    events = rt.events()
    await rt.start(KEY, "r1", "1", SPEC)
    rt.kill("r1", 3)
    await rt.park("r1", 1)
    assert ((await rt.inspect("r1")).status, (await rt.inspect("r1")).exit_code) == (ContainerStatus.EXITED, 3)
    assert (await anext(events)).exit_code == 3
    with pytest.raises(asyncio.TimeoutError):  # no second death
        await asyncio.wait_for(anext(events), 0)


async def test_an_unpark_waits_on_the_start_delay_and_a_cancelled_one_leaves_it_parked():
    sleeps = Sleeps()
    rt = FakeRuntime(sleep=sleeps)
    await rt.start(KEY, "r1", "1", SPEC)
    await rt.park("r1", 1)
    rt.start_delay_s = 5
    started = []
    unparking = asyncio.create_task(rt.unpark("r1", on_started=lambda: started.append(True)))
    await until_asked(sleeps)
    assert sleeps.asked == [5] and (await rt.inspect("r1")).status is ContainerStatus.EXITED
    unparking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unparking
    parked = await rt.inspect("r1")
    assert (parked.status, parked.address, started) == (ContainerStatus.EXITED, None, [])
    sleeps.wake.set()
    assert (await rt.unpark("r1")).status is ContainerStatus.RUNNING


async def test_a_failed_unpark_leaves_it_parked_and_an_unparked_one_may_exit_at_once():
    rt = FakeRuntime()
    events = rt.events()
    await rt.start(KEY, "r1", "1", SPEC)
    await rt.park("r1", 1)
    await anext(events)
    rt.fail_next_start("could not select device driver")
    with pytest.raises(RuntimeFailure, match="unpark container replica r1: could not select device driver"):
        await rt.unpark("r1")
    assert ((await rt.inspect("r1")).status, (await rt.inspect("r1")).address) == (ContainerStatus.EXITED, None)
    rt.exit_next_start(1, "CUDA error")
    assert (await rt.unpark("r1")).status is ContainerStatus.EXITED
    assert ((await anext(events)).exit_code, (await rt.logs("r1"))[-1]) == (1, "CUDA error")


async def test_an_unparked_replica_is_a_new_process_hung_no_more():
    rt = FakeRuntime()
    await rt.start(KEY, "r1", "1", SPEC)
    rt.hang("r1")
    await rt.park("r1", 1)
    await rt.unpark("r1")
    assert not rt.is_hung("r1")


# --- the same behaviour on both runtimes ---------------------------------------------------------

# Generous bounds for the real engine on a loaded CI machine: waits on conditions, not delays.
DOCKER_WAIT_S = 30.0


class FakeSubject:
    """The fake under the shared tests: runtimes of one `FakeEngine`, and what a test does to a
    container from outside the runtime (make it ignore SIGTERM, hang it, look at the engine)."""

    name = "fake"

    def __init__(self):
        self.engine = FakeEngine()
        self.key = KEY

    def runtime(self, instance: str | None) -> FakeRuntime:
        return FakeRuntime(engine=self.engine, instance=instance)

    async def start(self, rt: FakeRuntime, replica_id: str, *, ignoring_sigterm=False, exit_code=None) -> ReplicaInfo:
        if exit_code is not None:
            rt.exit_next_start(exit_code)
        info = await rt.start(self.key, replica_id, "1", SPEC)
        if ignoring_sigterm:
            rt.ignore_sigterm(replica_id)
        return info

    async def hang(self, rt: FakeRuntime, info: ReplicaInfo) -> None:
        rt.hang(info.replica_id)

    async def serving(self, rt: FakeRuntime, info: ReplicaInfo) -> ReplicaInfo:
        """An unparked replica, once it serves: the fake's does at once (nothing listens there)."""
        assert not rt.is_hung(info.replica_id)
        return info

    async def leftovers(self) -> list[str]:
        return [c.info.container_name for c in self.engine.containers.values() if c.info.endpoint == self.key]

    async def networks(self) -> list[str]:
        return sorted(n.name for n in self.engine.networks.values()
                      if (n.labels["endpointd.namespace"], n.labels["endpointd.name"]) == (self.key.namespace, self.key.name))

    async def network_of(self, info: ReplicaInfo) -> list[str]:
        return [self.engine.containers[info.container_id].network]

    async def close(self) -> None:
        pass


class DockerSubject:
    """The real engine under the shared tests, with the echo engine: `docker pause` hangs a
    replica, a bare `sleep` as PID 1 ignores SIGTERM, `docker ps -a` shows what is left."""

    name = "docker"

    def __init__(self, key: EndpointKey):
        self.key = key
        self.runtimes: list[DockerRuntime] = []

    def runtime(self, instance: str | None) -> DockerRuntime:
        rt = DockerRuntime(instance=instance)
        self.runtimes.append(rt)
        return rt

    async def start(self, rt: DockerRuntime, replica_id: str, *, ignoring_sigterm=False, exit_code=None) -> ReplicaInfo:
        if exit_code is not None:
            spec = ContainerSpec(image=ECHO_IMAGE, entrypoint=("python3", "-c"), args=(f"exit({exit_code})",))
        elif ignoring_sigterm:  # as PID 1 without a handler, the process ignores SIGTERM
            spec = ContainerSpec(image=ECHO_IMAGE, entrypoint=("python3", "-c"), args=("import time; time.sleep(600)",))
        else:
            spec = ContainerSpec(image=ECHO_IMAGE)
        info = await rt.start(self.key, replica_id, "1", spec)
        if exit_code is None and not ignoring_sigterm:  # serving: its SIGTERM handler is installed
            async with aiohttp.ClientSession() as session:
                info = await readiness.wait_ready(rt, info, session=session, deadline_s=DOCKER_WAIT_S)
        return info

    async def hang(self, rt: DockerRuntime, info: ReplicaInfo) -> None:
        await docker_cli("pause", info.container_id)

    async def serving(self, rt: DockerRuntime, info: ReplicaInfo) -> ReplicaInfo:
        async with aiohttp.ClientSession() as session:
            return await readiness.wait_ready(rt, info, session=session, deadline_s=DOCKER_WAIT_S)

    async def leftovers(self) -> list[str]:
        return await engine_containers(self.key)

    async def networks(self) -> list[str]:
        return await engine_networks(self.key.namespace, self.key.name)

    async def network_of(self, info: ReplicaInfo) -> list[str]:
        return sorted((await docker_inspect("container", info.container_id))["NetworkSettings"]["Networks"])

    async def close(self) -> None:
        for rt in self.runtimes:
            await rt.close()


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
def engine_kind(request):
    """Which runtime; for Docker, its fixture requires the engine and removes the test endpoint's
    containers afterwards. Not async: an async fixture cannot ask for another one by name."""
    if request.param == "docker":
        request.getfixturevalue("docker_runtime")
    return request.param


@pytest.fixture
async def subject(engine_kind, docker_key):
    subject = FakeSubject() if engine_kind == "fake" else DockerSubject(docker_key)
    try:
        yield subject
    finally:
        await subject.close()


def instance() -> str:
    """An instance of the test's own, so that no other test's containers are in its view."""
    return f"test-{uuid.uuid4().hex[:8]}"


async def death_of(events, replica_id: str):
    """The next death of this replica on the stream."""
    async with asyncio.timeout(DOCKER_WAIT_S):
        async for event in events:
            if event.replica_id == replica_id:
                return event
    raise AssertionError("the event stream ended")


async def test_a_started_replica_runs_and_a_stop_is_sigterm_then_removal(subject):
    rt = subject.runtime(instance())
    events = rt.events()
    try:
        info = await subject.start(rt, "r1")
        assert (info.status, info.gpus) == (ContainerStatus.RUNNING, ())
        assert info.address.startswith("127.0.0.1:") and await rt.list(subject.key) == [info]
        await rt.stop("r1", grace_s=30)
        event = await death_of(events, "r1")
        assert (event.kind, event.endpoint, event.exit_code) == (EventKind.DIED, subject.key, 0)  # on SIGTERM, at once
    finally:
        await events.aclose()
    assert await rt.list(subject.key) == [] and await subject.leftovers() == []


async def test_a_replica_that_ignores_sigterm_is_killed_after_the_grace_period(subject):
    rt = subject.runtime(instance())
    events = rt.events()
    try:
        await subject.start(rt, "r1", ignoring_sigterm=True)
        await rt.stop("r1", grace_s=1)
        assert (await death_of(events, "r1")).exit_code == 137
    finally:
        await events.aclose()
    assert await subject.leftovers() == []


async def test_a_stop_of_an_exited_replica_removes_it(subject):
    rt = subject.runtime(instance())
    events = rt.events()
    try:
        await subject.start(rt, "r1", exit_code=3)
        assert (await death_of(events, "r1")).exit_code == 3
    finally:
        await events.aclose()
    assert ((await rt.inspect("r1")).status, (await rt.inspect("r1")).exit_code) == (ContainerStatus.EXITED, 3)
    await rt.stop("r1", grace_s=1)
    assert await subject.leftovers() == []


async def test_a_hung_replica_still_runs_and_is_stopped_and_removed(subject):
    rt = subject.runtime(instance())
    info = await subject.start(rt, "r1")
    await subject.hang(rt, info)  # docker pause: the process frozen, its port still published
    hung = await rt.inspect("r1")
    assert (hung.status, hung.address) == (ContainerStatus.RUNNING, info.address)
    await rt.stop("r1", grace_s=1)
    assert await subject.leftovers() == []
    with pytest.raises(ReplicaNotFound, match="inspect replica r1"):
        await rt.inspect("r1")


async def test_absent_replicas_are_replica_not_found(subject):
    rt = subject.runtime(instance())
    for operation, call in [
        ("stop container", lambda: rt.stop("r9", 1)),
        ("park container", lambda: rt.park("r9", 1)),
        ("unpark container", lambda: rt.unpark("r9")),
        ("inspect", lambda: rt.inspect("r9")),
        ("logs", lambda: rt.logs("r9")),
        ("stats", lambda: rt.usage("r9")),
    ]:
        with pytest.raises(ReplicaNotFound, match=f"{operation} replica r9"):
            await call()


async def test_instances_never_see_nor_stop_each_others_replicas(subject):
    mine, other, unscoped = subject.runtime(instance()), subject.runtime(instance()), subject.runtime(None)
    my_events = mine.events()
    try:
        await subject.start(mine, "r1")
        await subject.start(other, "r2")
        assert [i.replica_id for i in await mine.list(subject.key)] == ["r1"]
        assert [i.replica_id for i in await other.list(subject.key)] == ["r2"]
        assert sorted(i.replica_id for i in await unscoped.list(subject.key)) == ["r1", "r2"]  # no instance: all
        with pytest.raises(ReplicaNotFound):
            await other.stop("r1", 1)
        assert (await mine.inspect("r1")).status is ContainerStatus.RUNNING
        # The other's death comes first; mine is the first my stream gives, so the other's never reached it.
        await other.stop("r2", 1)
        await mine.stop("r1", 1)
        first = await asyncio.wait_for(anext(my_events), DOCKER_WAIT_S)
        assert (first.replica_id, first.exit_code) == ("r1", 0)
    finally:
        await my_events.aclose()
    assert await subject.leftovers() == []


async def test_an_endpoints_replicas_share_a_network_of_its_own_made_at_the_first_start(subject):
    scope = instance()
    rt, unscoped = subject.runtime(scope), subject.runtime(None)
    assert await subject.networks() == []
    # Two starts at once make one network, not two (Docker itself would make both).
    first, second = await asyncio.gather(subject.start(rt, "r1"), subject.start(rt, "r2"))
    mine = network_name(scope, subject.key)
    assert await subject.networks() == [mine]
    assert await subject.network_of(first) == await subject.network_of(second) == [mine]  # never "bridge"
    # Another instance's replicas of the same endpoint are on a network of their own.
    third = await subject.start(unscoped, "r3")
    assert await subject.network_of(third) == [network_name(None, subject.key)]
    assert await subject.networks() == sorted([mine, network_name(None, subject.key)])
    assert subject.key in await rt.networks() and await rt.networks() == [subject.key]
    await unscoped.stop("r3", grace_s=1)
    await unscoped.remove_network(subject.key)
    assert await subject.networks() == [mine]


async def test_remove_network_removes_an_unused_network_keeps_a_used_one_and_ignores_an_absent_one(subject):
    rt = subject.runtime(instance())
    await rt.remove_network(subject.key)  # none yet: no error
    info = await subject.start(rt, "r1")
    await rt.remove_network(subject.key)  # a running replica still uses it: kept
    assert await subject.networks() == [network_name(rt.instance, subject.key)]
    assert (await rt.inspect("r1")).status is ContainerStatus.RUNNING and info.address
    await rt.stop("r1", grace_s=1)
    await rt.remove_network(subject.key)
    assert await subject.networks() == [] and await rt.networks() == []
    await rt.remove_network(subject.key)  # already gone: no error
    # A later start makes it again.
    await subject.start(rt, "r2")
    assert await subject.networks() == [network_name(rt.instance, subject.key)]


async def test_a_park_keeps_the_replica_stopped_and_an_unpark_serves_it_at_a_new_address(subject):
    rt = subject.runtime(instance())
    events = rt.events()
    try:
        info = await subject.start(rt, "r1")
        await rt.park("r1", grace_s=30)
        event = await death_of(events, "r1")  # a park is a death on the stream
        assert (event.kind, event.exit_code) == (EventKind.DIED, 0)
    finally:
        await events.aclose()
    [parked] = await rt.list(subject.key)
    assert (parked.status, parked.address, parked.container_id) == (ContainerStatus.EXITED, None, info.container_id)
    assert await subject.leftovers() == [info.container_name]
    started = []
    back = await rt.unpark("r1", on_started=lambda: started.append(True))
    assert (back.status, back.container_id, started) == (ContainerStatus.RUNNING, info.container_id, [True])
    assert back.address.startswith("127.0.0.1:") and back.address != info.address
    assert await subject.serving(rt, back) == back and await rt.list(subject.key) == [back]
    await rt.stop("r1", grace_s=1)
    assert await subject.leftovers() == []


async def test_a_park_kills_a_replica_that_ignores_sigterm_after_the_grace_period_and_keeps_it(subject):
    rt = subject.runtime(instance())
    events = rt.events()
    try:
        await subject.start(rt, "r1", ignoring_sigterm=True)
        await rt.park("r1", grace_s=1)
        assert (await death_of(events, "r1")).exit_code == 137
    finally:
        await events.aclose()
    assert ((await rt.inspect("r1")).status, (await rt.inspect("r1")).exit_code) == (ContainerStatus.EXITED, 137)
    assert len(await subject.leftovers()) == 1


async def test_a_park_of_an_exited_replica_leaves_it_as_it_is(subject):
    rt = subject.runtime(instance())
    events = rt.events()
    try:
        await subject.start(rt, "r1", exit_code=3)
        assert (await death_of(events, "r1")).exit_code == 3
    finally:
        await events.aclose()
    await rt.park("r1", grace_s=1)
    assert ((await rt.inspect("r1")).status, (await rt.inspect("r1")).exit_code) == (ContainerStatus.EXITED, 3)


async def test_a_hung_replica_is_parked_and_unparks_as_a_new_process(subject):
    rt = subject.runtime(instance())
    info = await subject.start(rt, "r1")
    await subject.hang(rt, info)
    await rt.park("r1", grace_s=1)
    assert (await rt.inspect("r1")).status is ContainerStatus.EXITED
    back = await rt.unpark("r1")
    assert await subject.serving(rt, back) == back  # not frozen any more


async def test_a_parked_replica_does_not_hold_its_network_and_cannot_unpark_without_it(subject):
    rt = subject.runtime(instance())
    await subject.start(rt, "r1")
    await rt.park("r1", grace_s=1)
    await rt.remove_network(subject.key)
    assert await subject.networks() == []
    with pytest.raises(RuntimeFailure, match="unpark container replica r1: .*network .* not found"):
        await rt.unpark("r1")
    assert ((await rt.inspect("r1")).status, (await rt.inspect("r1")).address) == (ContainerStatus.EXITED, None)
    await rt.stop("r1", grace_s=1)
    assert await subject.leftovers() == []


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

    ready = await readiness.wait_ready(rt, info, session=session, deadline_s=60, sleep=sleep, clock=lambda: 0.0)
    assert ready.replica_id == "r1" and polls == [readiness.FAST_POLL_S] * 3  # the first seconds: fast


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
