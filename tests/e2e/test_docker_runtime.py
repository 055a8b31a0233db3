"""The Docker runtime: its pure parts as tables, then against the real Docker engine with the echo
engine image (marked `docker`; they fail, never skip, under ENDPOINTD_REQUIRE_DOCKER=1). What the
fake runtime models too (stop grace, exited and paused replicas, not-found, instance scoping) is
checked on both runtimes by the shared table in test_fake_runtime.py."""

import asyncio
import base64
import json
import logging
import re
import time
import uuid

import aiohttp
import pytest

from engines import readiness
from engines.docker import (
    PIDS_LIMIT,
    DockerRuntime,
    create_config,
    registry_auth_header,
    replica_info,
    usage_from_stats,
)
from engines.images import ECHO_IMAGE
from engines.runtime import (
    ContainerSpec,
    ContainerStatus,
    EndpointKey,
    EventKind,
    ImagePullFailed,
    Mount,
    RegistryAuth,
    ReplicaNotFound,
    RuntimeFailure,
    Usage,
    network_name,
)
from tests.docker_fixtures import docker_cli, docker_inspect, engine_containers, gated_engine

SECRET = "s3cret-value"
# Generous bounds for behaviour checks, not benchmarks: a loaded CI machine may be slow.
READY_DEADLINE_S = 30.0
EVENT_WAIT_S = 30.0
STOP_MARGIN_S = 10.0


def new_id() -> str:
    """Replica ids are unique across endpoints (the runtime finds a container by its id alone)."""
    return f"r{uuid.uuid4().hex[:8]}"


def echo(**env: object) -> ContainerSpec:
    return ContainerSpec(image=ECHO_IMAGE, env={k: str(v) for k, v in env.items()}, secret_env={"HF_TOKEN": SECRET})


async def until_line(lines, text: str) -> str:
    async for line in lines:
        if text in line:
            return line
    raise AssertionError(f"the log ended without a line containing {text!r}")


# --- pure parts ------------------------------------------------------------------------------


def test_create_config_carries_labels_ports_limits_and_gpus():
    spec = ContainerSpec(
        image="img:1", port=8000, health_route="/ready", entrypoint=("serve",), args=("--x", "1"),
        env={"A": "1"}, secret_env={"TOKEN": SECRET}, mounts=(Mount("/models/m", "/repository"),),
        shm_size_bytes=1 << 30, cpus=1.5, memory_bytes=2 << 30, gpu_device_ids=("GPU-a", "GPU-b"),
        api_key="k3y",
    )
    config = create_config(EndpointKey("ns", "e"), "r1", "4", spec, "127.0.0.1", "net-ns-e")
    host = config["HostConfig"]
    assert config["Labels"] == {
        "endpointd.managed": "true", "endpointd.namespace": "ns", "endpointd.name": "e",
        "endpointd.replica": "r1", "endpointd.revision": "4", "endpointd.port": "8000",
        "endpointd.health-route": "/ready", "endpointd.api-key": "k3y",
    }
    assert host["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert (config["Entrypoint"], config["Cmd"]) == (["serve"], ["--x", "1"])
    assert config["Env"] == ["A=1", f"TOKEN={SECRET}"]
    assert host["Binds"] == ["/models/m:/repository:ro"]
    assert (host["ShmSize"], host["NanoCpus"], host["Memory"]) == (1 << 30, 1_500_000_000, 2 << 30)
    assert host["MemorySwap"] == 2 << 30  # the limit is the limit: no swap on top of it
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "DeviceIDs": ["GPU-a", "GPU-b"], "Capabilities": [["gpu"]]}]


def test_create_config_leaves_the_image_defaults_and_no_gpu():
    config = create_config(EndpointKey("ns", "e"), "r1", "1", ContainerSpec(image="img:1"), "127.0.0.1", "net-ns-e")
    assert not {"Entrypoint", "Cmd"} & config.keys()
    assert not {"DeviceRequests", "NanoCpus", "Memory", "MemorySwap", "ShmSize"} & config["HostConfig"].keys()
    assert "endpointd.api-key" not in config["Labels"]  # no key: no label


def test_create_config_joins_only_the_endpoints_network_without_privileges():
    spec = ContainerSpec(image="img:1", mounts=(Mount("/models/m", "/repository"), Mount("/models/blobs", "/blobs")))
    config = create_config(EndpointKey("ns", "e"), "r1", "1", spec, "127.0.0.1", "net-ns-e")
    host = config["HostConfig"]
    # The endpoint's own network, never Docker's default bridge, the host's or another container's.
    assert host["NetworkMode"] == "net-ns-e"
    assert config["NetworkingConfig"] == {"EndpointsConfig": {"net-ns-e": {}}}
    # No privileges: nothing gained through setuid files, every capability dropped but one, a
    # bounded number of tasks, and namespaces of its own.
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert (host["CapDrop"], host["CapAdd"]) == (["ALL"], ["NET_BIND_SERVICE"])
    assert host["PidsLimit"] == PIDS_LIMIT
    assert host["Privileged"] is False
    assert host["IpcMode"] == "private"
    assert not {"PidMode", "UTSMode", "UsernsMode", "CgroupnsMode", "Devices", "DeviceCgroupRules", "Mounts",
                "VolumesFrom", "Links", "Sysctls"} & host.keys()
    # Nothing of the host but the model, read-only.
    assert host["Binds"] == ["/models/m:/repository:ro", "/models/blobs:/blobs:ro"]
    assert "Volumes" not in config


@pytest.mark.parametrize("instance, key", [
    (None, EndpointKey("acme", "e1")),
    ("0123456789abcdef", EndpointKey("acme", "e1")),
    ("0123456789abcdef", EndpointKey("a" * 200, "b" * 200)),  # bounded, however long the names
    ("0123456789abcdef", EndpointKey("ns with spaces/and:colons", "é")),  # only what Docker accepts
])
def test_network_names_are_bounded_valid_and_name_their_endpoint(instance, key):
    name = network_name(instance, key)
    assert len(name) <= 63 and name.startswith("endpointd-")
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name)
    assert name == network_name(instance, key)  # stable: a restarted endpointd finds it again


def test_network_names_differ_for_every_instance_and_endpoint():
    keys = [EndpointKey("a-b", "c"), EndpointKey("a", "b-c"), EndpointKey("a", "b"), EndpointKey("b", "a"),
            EndpointKey("x" * 100, "one"), EndpointKey("x" * 100, "two")]
    names = {network_name(instance, key) for instance in (None, "i1", "i2") for key in keys}
    assert len(names) == 3 * len(keys)


def _inspected(status, *, ports=None, device_requests=None, exit_code=0):
    """`docker inspect` data as Docker 20.10 gives it, reduced to what `replica_info` reads."""
    return {
        "Id": "c1", "Name": "/endpointd-ns-e-r1",
        "Config": {"Labels": {"endpointd.replica": "r1", "endpointd.namespace": "ns", "endpointd.name": "e", "endpointd.port": "80"}},
        "State": {"Status": status, "ExitCode": exit_code},
        "NetworkSettings": {"Ports": ports or {}},
        "HostConfig": {"DeviceRequests": device_requests},
    }


PUBLISHED = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}]}


@pytest.mark.parametrize(
    "data, status, address, exit_code, gpus",
    [
        (_inspected("created"), ContainerStatus.CREATED, None, None, ()),  # not started: no port yet
        (_inspected("running", ports=PUBLISHED), ContainerStatus.RUNNING, "127.0.0.1:32768", None, ()),
        (_inspected("paused", ports=PUBLISHED), ContainerStatus.RUNNING, "127.0.0.1:32768", None, ()),  # frozen, alive
        (_inspected("exited", exit_code=3), ContainerStatus.EXITED, None, 3, ()),
        (_inspected("dead", exit_code=137), ContainerStatus.EXITED, None, 137, ()),
        (_inspected("running", ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "1"}]}), ContainerStatus.RUNNING, "127.0.0.1:1", None, ()),
        # As `create_config` asks, and as `docker create --gpus` stores them (Driver ""): both read back.
        (_inspected("created", device_requests=[{"Driver": "nvidia", "DeviceIDs": ["GPU-a", "GPU-b"], "Capabilities": [["gpu"]]}]),
         ContainerStatus.CREATED, None, None, ("GPU-a", "GPU-b")),
        (_inspected("running", device_requests=[{"Driver": "", "Count": 0, "DeviceIDs": ["GPU-c"]}, {"DeviceIDs": None}]),
         ContainerStatus.RUNNING, None, None, ("GPU-c",)),
    ],
)
def test_replica_info_reads_the_state_the_address_and_the_gpus(data, status, address, exit_code, gpus):
    info = replica_info(data)
    assert (info.status, info.address, info.exit_code, info.gpus) == (status, address, exit_code, gpus)


def test_replica_info_reads_the_api_key_back_and_never_shows_it():
    data = _inspected("running", ports=PUBLISHED)
    assert replica_info(data).api_key is None
    data["Config"]["Labels"]["endpointd.api-key"] = "k3y-value"
    info = replica_info(data)
    assert info.api_key == "k3y-value" and "k3y-value" not in repr(info)
    assert (info.replica_id, info.endpoint, info.container_name) == ("r1", EndpointKey("ns", "e"), "endpointd-ns-e-r1")


def _stats(total, pre_total, system, pre_system, online=2, usage=100, inactive=None, limit=1000):
    details = {} if inactive is None else {"total_inactive_file": inactive}
    return {
        "cpu_stats": {"cpu_usage": {"total_usage": total}, "system_cpu_usage": system, "online_cpus": online},
        "precpu_stats": {"cpu_usage": {"total_usage": pre_total}, "system_cpu_usage": pre_system},
        "memory_stats": {"usage": usage, "limit": limit, "stats": details},
    }


@pytest.mark.parametrize(
    "stats, expected",
    [
        (_stats(50, 0, 1000, 0), Usage(0.0, 100, 1000)),  # first sample: no previous one, 0 %
        (_stats(150, 100, 1100, 1000), Usage(100.0, 100, 1000)),  # 50/100 of 2 CPUs = one CPU busy
        (_stats(300, 100, 1100, 1000, online=4), Usage(800.0, 100, 1000)),  # 200/100 × 4 × 100
        (_stats(100, 100, 1100, 1000, usage=100, inactive=30), Usage(0.0, 70, 1000)),  # idle; cache not counted
        ({}, Usage(0.0, 0, None)),  # a stopped container's empty sample
    ],
)
def test_usage_is_computed_as_docker_stats_does(stats, expected):
    assert usage_from_stats(stats) == expected


@pytest.mark.parametrize(
    "image, server",
    [
        ("ghcr.io/acme/engine:1", "ghcr.io"),
        ("localhost:5000/engine", "localhost:5000"),
        ("acme/engine:1", "docker.io"),
    ],
)
def test_registry_auth_header_is_base64url_json(image, server):
    header = registry_auth_header(image, RegistryAuth("bob", "pw"))
    assert json.loads(base64.urlsafe_b64decode(header)) == {"username": "bob", "password": "pw", "serveraddress": server}


async def test_an_unreachable_engine_is_a_runtime_error_naming_the_operation(tmp_path):
    runtime = DockerRuntime(url=f"unix://{tmp_path}/no-docker.sock")
    try:
        with pytest.raises(RuntimeFailure, match="list containers: cannot reach the Docker engine"):
            await runtime.list()
        with pytest.raises(RuntimeFailure, match="stop container replica r1: cannot reach the Docker engine"):
            await runtime.stop("r1", 1)
        with pytest.raises(RuntimeFailure, match="park container replica r1: cannot reach the Docker engine"):
            await runtime.park("r1", 1)
        with pytest.raises(RuntimeFailure, match="unpark container replica r1: cannot reach the Docker engine"):
            await runtime.unpark("r1")
        key = EndpointKey("ns", "e")
        with pytest.raises(RuntimeFailure, match=f"create network {network_name(None, key)}: cannot reach the Docker engine"):
            await runtime.start(key, "r1", "1", ContainerSpec(image="img"))
        with pytest.raises(RuntimeFailure, match=f"remove network {network_name(None, key)}: cannot reach the Docker engine"):
            await runtime.remove_network(key)
        with pytest.raises(RuntimeFailure, match="list networks: cannot reach the Docker engine"):
            await runtime.networks()
    finally:
        await runtime.close()


# --- against the real Docker engine ---------------------------------------------------------


@pytest.mark.docker
async def test_start_serve_logs_usage_and_stop(docker_runtime, docker_key, caplog):
    rid = new_id()
    caplog.set_level(logging.DEBUG)
    info = await docker_runtime.start(docker_key, rid, "7", echo(ECHO_STARTUP_DELAY_S=0.3))
    assert SECRET not in caplog.text  # secrets reach the container, never the log
    assert info.container_name == f"endpointd-{docker_key.namespace}-echo-{rid}"
    assert info.address.startswith("127.0.0.1:")  # published on loopback only
    followed = docker_runtime.follow_logs(rid, tail=50)
    request_line = asyncio.create_task(until_line(followed, "POST /generate 200"))
    try:
        async with aiohttp.ClientSession() as session:
            info = await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=READY_DEADLINE_S)
            async with session.post(f"http://{info.address}/generate", json={"inputs": "real docker"}) as response:
                assert (await response.json()) == {"generated_text": "real docker "}
        assert await asyncio.wait_for(request_line, EVENT_WAIT_S) == "POST /generate 200"
    finally:
        request_line.cancel()
        await followed.aclose()
    lines = await docker_runtime.logs(rid)
    assert "echo engine ready" in lines and "POST /generate 200" in lines
    usage = await docker_runtime.usage(rid)
    assert usage.memory_bytes > 0 and usage.cpu_percent >= 0

    started = time.monotonic()
    await docker_runtime.stop(rid, grace_s=STOP_MARGIN_S)
    assert time.monotonic() - started < STOP_MARGIN_S  # the engine exits on SIGTERM, no SIGKILL needed
    assert await docker_runtime.list(docker_key) == []
    with pytest.raises(ReplicaNotFound, match=f"inspect replica {rid}"):
        await docker_runtime.inspect(rid)


@pytest.mark.docker
async def test_stop_kills_a_container_that_ignores_sigterm_after_the_grace_period(docker_runtime, docker_key):
    rid = new_id()
    # As PID 1 without a handler, the process ignores SIGTERM: only the SIGKILL after grace ends it.
    stubborn = ContainerSpec(image=ECHO_IMAGE, entrypoint=("python3", "-c"), args=("import time; time.sleep(600)",))
    await docker_runtime.start(docker_key, rid, "1", stubborn)
    started = time.monotonic()
    await docker_runtime.stop(rid, grace_s=1)
    assert 0.9 <= time.monotonic() - started < 1 + STOP_MARGIN_S
    assert await docker_runtime.list(docker_key) == []


@pytest.mark.docker
async def test_a_new_runtime_adopts_running_replicas_from_their_labels(docker_runtime, docker_key):
    rid = new_id()
    info = await docker_runtime.start(docker_key, rid, "3", ContainerSpec(image=ECHO_IMAGE, health_route="/health"))
    fresh = DockerRuntime()
    try:
        found = await fresh.list(docker_key)
    finally:
        await fresh.close()
    assert [(f.replica_id, f.revision, f.address, f.status, f.health_route, f.container_id) for f in found] == [
        (rid, "3", info.address, ContainerStatus.RUNNING, "/health", info.container_id)
    ]


@pytest.mark.docker
async def test_a_crash_arrives_as_a_death_event_with_its_exit_code(docker_runtime, docker_key):
    rid = new_id()
    events = docker_runtime.events()  # from now on: before the container exists

    async def death() -> object:
        async for event in events:
            if event.replica_id == rid:
                return event

    died = asyncio.create_task(death())
    try:
        info = await docker_runtime.start(docker_key, rid, "1", echo(ECHO_CRASH_AFTER_REQUESTS=1))
        async with aiohttp.ClientSession() as session:
            info = await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=READY_DEADLINE_S)
            async with session.post(f"http://{info.address}/generate", json={"inputs": "last words"}) as response:
                assert response.status == 200
        event = await asyncio.wait_for(died, EVENT_WAIT_S)
    finally:
        died.cancel()
        await events.aclose()
    assert (event.kind, event.replica_id, event.endpoint, event.exit_code) == (EventKind.DIED, rid, docker_key, 3)
    assert (await docker_runtime.inspect(rid)).status is ContainerStatus.EXITED


@pytest.mark.docker
async def test_an_exit_during_start_up_names_the_code_and_the_last_lines(docker_runtime, docker_key):
    rid = new_id()
    script = "import sys; print('loading weights'); print('CUDA out of memory', file=sys.stderr); sys.exit(7)"
    spec = ContainerSpec(image=ECHO_IMAGE, entrypoint=("python3", "-c"), args=(script,))
    info = await docker_runtime.start(docker_key, rid, "1", spec)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(readiness.ReplicaStartFailed) as failure:
            await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=READY_DEADLINE_S)
    assert failure.value.exit_code == 7
    # Both streams; their relative order is not kept (two pipes, two readers in Docker).
    assert sorted(failure.value.last_lines) == ["CUDA out of memory", "loading weights"]
    assert f"start replica {rid}: exited with code 7" in str(failure.value)


@pytest.mark.docker
async def test_a_replica_never_ready_times_out(docker_runtime, docker_key):
    rid = new_id()
    info = await docker_runtime.start(docker_key, rid, "1", echo(ECHO_NEVER_READY=1))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(readiness.ReplicaStartTimeout, match=f"replica {rid}: /health did not answer 200 within 1 s"):
            await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=1)


@pytest.mark.docker
async def test_a_pull_failure_names_the_image_and_a_local_image_is_not_pulled(docker_runtime):
    with pytest.raises(ImagePullFailed, match="pull image example.invalid/nothing:1: .*example.invalid"):
        await docker_runtime.ensure_image("example.invalid/nothing:1", RegistryAuth("bob", "pw"))
    progress: list[str] = []
    await docker_runtime.ensure_image(ECHO_IMAGE, progress=progress.append)
    assert progress == []


@pytest.mark.docker
async def test_docker_errors_name_the_operation_and_the_container(docker_runtime, docker_key):
    rid = new_id()
    with pytest.raises(RuntimeFailure, match=f"start container endpointd-{docker_key.namespace}-echo-{rid}: .*no-such-image"):
        await docker_runtime.start(docker_key, rid, "1", ContainerSpec(image="no-such-image:never"))
    assert await docker_runtime.list(docker_key) == []  # nothing half-created left behind
    for operation, call in [
        ("stop container", lambda: docker_runtime.stop(rid, 1)),
        ("logs", lambda: docker_runtime.logs(rid)),
        ("stats", lambda: docker_runtime.usage(rid)),
    ]:
        with pytest.raises(ReplicaNotFound, match=f"{operation} replica {rid}: no container of endpointd"):
            await call()


@pytest.mark.docker
async def test_a_failing_build_names_the_step_and_its_output(docker_runtime, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        f"FROM {ECHO_IMAGE}\nRUN echo about to fail && exit 7\n"
    )
    tag = f"endpointd/test-broken:{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeFailure, match=f"(?s)build image {tag}: .*non-zero code: 7 \\(at Step 2/2 : RUN .*about to fail"):
        await docker_runtime.build_image(tmp_path, tag)
    assert not await docker_runtime.image_exists(tag)


# Where a start is cancelled. The relay holds Docker's answer to the request named (after the engine
# has done it), so the cancel lands while the container exists and its creator has not heard yet.
API = r"(/v[0-9.]+)?/containers"
CANCEL_POINTS = [
    pytest.param(None, 0, False, id="before-it-runs"),
    pytest.param(None, 1, False, id="after-one-yield"),
    pytest.param(f"POST {API}/create", 0, False, id="created-unanswered"),
    pytest.param(f"POST {API}/[^/]+/start", 0, False, id="started-unanswered"),
    pytest.param(f"GET {API}/[^/]+/json", 0, False, id="during-inspect"),
    pytest.param(f"POST {API}/create", 0, True, id="cancelled-again-while-cleaning-up"),
]


@pytest.mark.docker
@pytest.mark.parametrize("hold, yields, twice", CANCEL_POINTS)
async def test_a_cancelled_start_leaves_no_container(docker_runtime, docker_key, hold, yields, twice):
    rid = new_id()
    async with gated_engine(hold) as (gate, url):
        runtime = DockerRuntime(url=url)
        try:
            starting = asyncio.create_task(runtime.start(docker_key, rid, "1", echo()))
            for _ in range(yields):
                await asyncio.sleep(0)
            if hold:
                await asyncio.wait_for(gate.reached.wait(), EVENT_WAIT_S)
                assert await engine_containers(docker_key) == [f"endpointd-{docker_key.namespace}-echo-{rid}"]
            starting.cancel()
            if twice:
                for _ in range(3):  # let it reach its cleanup, which waits on the held answer
                    await asyncio.sleep(0)
                starting.cancel()
            gate.release.set()
            with pytest.raises(asyncio.CancelledError):
                await starting
        finally:
            await runtime.close()
    # Gone before CancelledError came out: no wait here.
    assert await engine_containers(docker_key) == []
    assert await docker_runtime.list(docker_key) == []


@pytest.mark.docker
async def test_the_gpus_of_a_found_container_are_read_back_from_it(docker_runtime, docker_key):
    """A restarted endpointd rebuilds its GPU assignments from its containers. Created by the CLI,
    not started: this engine has no NVIDIA runtime, and Docker checks the devices only at start."""
    rid = new_id()
    labels = {"endpointd.managed": "true", "endpointd.namespace": docker_key.namespace, "endpointd.name": docker_key.name, "endpointd.replica": rid}
    await docker_cli(
        "create", *(f"--label={k}={v}" for k, v in labels.items()), "--gpus", '"device=GPU-a,GPU-b"', ECHO_IMAGE
    )
    [found] = await docker_runtime.list(docker_key)
    assert (found.replica_id, found.status, found.address, found.gpus) == (rid, ContainerStatus.CREATED, None, ("GPU-a", "GPU-b"))
    await docker_runtime.stop(rid, grace_s=1)  # a never started container is removed too
    assert await engine_containers(docker_key) == []


@pytest.mark.docker
async def test_a_start_the_engine_cannot_give_its_gpus_leaves_no_container(docker_runtime, docker_key):
    rid = new_id()
    spec = ContainerSpec(image=ECHO_IMAGE, gpu_device_ids=("GPU-none",))
    with pytest.raises(RuntimeFailure, match=f"start container endpointd-{docker_key.namespace}-echo-{rid}: .*device"):
        await docker_runtime.start(docker_key, rid, "1", spec)  # created, then refused at start
    assert await engine_containers(docker_key) == []


# --- the parked tier: park keeps a stopped container, unpark starts it again --------------------


@pytest.mark.docker
async def test_an_unparked_replica_serves_on_the_port_docker_publishes_anew(docker_runtime, docker_key):
    rid = new_id()
    async with aiohttp.ClientSession() as session:
        info = await docker_runtime.start(docker_key, rid, "1", echo())
        info = await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=READY_DEADLINE_S)
        await docker_runtime.park(rid, grace_s=STOP_MARGIN_S)
        assert (await docker_inspect("container", info.container_id))["State"]["Status"] == "exited"
        with pytest.raises(aiohttp.ClientConnectionError):  # nothing listens there any more
            await session.get(f"http://{info.address}/health")
        back = await docker_runtime.unpark(rid)
        published = (await docker_cli("port", info.container_id, "80/tcp")).strip()
        assert back.address == published != info.address  # a new host port, read back after the start
        back = await readiness.wait_ready(docker_runtime, back, session=session, deadline_s=READY_DEADLINE_S)
        async with session.post(f"http://{back.address}/generate", json={"inputs": "woken"}) as response:
            assert (await response.json()) == {"generated_text": "woken "}
    await docker_runtime.stop(rid, grace_s=STOP_MARGIN_S)
    assert await engine_containers(docker_key) == []


@pytest.mark.docker
async def test_a_never_started_container_is_left_by_park_and_started_by_unpark(docker_runtime, docker_key):
    """Created by the CLI, as a pre-created replica would be: a park leaves it CREATED, and an
    unpark starts it for the first time."""
    rid = new_id()
    labels = {"endpointd.managed": "true", "endpointd.namespace": docker_key.namespace, "endpointd.name": docker_key.name,
              "endpointd.replica": rid, "endpointd.port": "80"}
    await docker_cli("create", *(f"--label={k}={v}" for k, v in labels.items()), "--publish", "127.0.0.1::80", ECHO_IMAGE)
    await docker_runtime.park(rid, grace_s=1)
    [found] = await docker_runtime.list(docker_key)
    assert (found.status, found.address) == (ContainerStatus.CREATED, None)
    back = await docker_runtime.unpark(rid)
    assert back.status is ContainerStatus.RUNNING and back.address.startswith("127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        await readiness.wait_ready(docker_runtime, back, session=session, deadline_s=READY_DEADLINE_S)


# Where an unpark is cancelled; the relay holds Docker's answer as for the starts above.
UNPARK_CANCEL_POINTS = [
    pytest.param(None, False, id="before-it-runs"),
    pytest.param(f"POST {API}/[^/]+/start", False, id="started-unanswered"),
    pytest.param(f"GET {API}/[^/]+/json", False, id="during-inspect"),
    pytest.param(f"POST {API}/[^/]+/start", True, id="cancelled-again-while-parking"),
]


@pytest.mark.docker
@pytest.mark.parametrize("hold, twice", UNPARK_CANCEL_POINTS)
async def test_a_cancelled_unpark_leaves_the_container_parked(docker_runtime, docker_key, hold, twice):
    rid = new_id()
    info = await docker_runtime.start(docker_key, rid, "1", echo())
    await docker_runtime.park(rid, grace_s=STOP_MARGIN_S)
    async with gated_engine(hold) as (gate, url):
        runtime = DockerRuntime(url=url)
        try:
            unparking = asyncio.create_task(runtime.unpark(rid))
            if hold:
                await asyncio.wait_for(gate.reached.wait(), EVENT_WAIT_S)
                # The engine has started it; its starter has not heard yet.
                assert (await docker_inspect("container", info.container_id))["State"]["Status"] == "running"
            unparking.cancel()
            if twice:
                for _ in range(3):  # let it reach its parking again, which waits on the held answer
                    await asyncio.sleep(0)
                unparking.cancel()
            gate.release.set()
            with pytest.raises(asyncio.CancelledError):
                await unparking
        finally:
            await runtime.close()
    # Stopped again and kept before CancelledError came out: no wait here.
    [found] = await docker_runtime.list(docker_key)
    assert (found.status, found.address, found.container_id) == (ContainerStatus.EXITED, None, info.container_id)
    assert await engine_containers(docker_key) == [info.container_name]
