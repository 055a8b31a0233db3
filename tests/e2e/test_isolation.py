"""No tenant escapes its namespace through the engines: each endpoint's replicas on a Docker network
of their own, a per-replica engine API key (kept on the container, sent by the health probes),
replicas without privileges and within their instance's limits. With the fake runtime and an
in-process engine first, then on the real Docker engine with the echo engine (marked `docker`):
traffic goes to ports published on 127.0.0.1 only; that one container cannot reach another is
shown from inside a container (`docker exec`), so that traffic stays inside Docker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from autoscaler.control.launcher import EngineLauncher
from engines.docker import PIDS_LIMIT, DockerRuntime
from engines.fake import FakeRuntime
from engines.gpus import GpuAllocator
from engines.images import ECHO_IMAGE
from engines.runtime import (
    ContainerSpec,
    EndpointKey,
    RuntimeFailure,
    network_labels,
    network_name,
)
from tests.docker_fixtures import docker_cli, docker_inspect, engine_networks

KEY_A, KEY_B = EndpointKey("acme", "a"), EndpointKey("globex", "b")
GIB = 1024**3
READY_DEADLINE_S = 30.0
# A connection between containers that isolation forbids is dropped, not refused: bounded by this.
CONNECT_TIMEOUT_S = 2.0


# --- the fake runtime models the networks -------------------------------------------------------


async def test_the_fake_records_each_endpoints_network_with_its_labels():
    rt = FakeRuntime(instance="i1")
    await rt.start(KEY_A, "r1", "1", ContainerSpec(image="img"))
    await rt.start(KEY_A, "r2", "1", ContainerSpec(image="img"))
    await rt.start(KEY_B, "r3", "1", ContainerSpec(image="img"))
    networks = rt.engine.networks
    assert sorted(networks) == sorted([network_name("i1", KEY_A), network_name("i1", KEY_B)])
    assert networks[network_name("i1", KEY_A)].labels == network_labels("i1", KEY_A) == {
        "endpointd.managed": "true", "endpointd.instance": "i1", "endpointd.namespace": "acme", "endpointd.name": "a",
    }
    assert [c.network for c in rt.containers.values()] == [network_name("i1", KEY_A)] * 2 + [network_name("i1", KEY_B)]
    assert sorted(await rt.networks(), key=str) == [KEY_A, KEY_B]
    for rid in ("r1", "r2", "r3"):
        await rt.stop(rid, 1)
    await rt.remove_network(KEY_A)
    assert list(networks) == [network_name("i1", KEY_B)]
    assert ("remove_network", "acme/a") in rt.calls


async def test_the_fake_keeps_the_api_key_on_the_container_and_never_shows_it():
    rt = FakeRuntime()
    info = await rt.start(KEY_A, "r1", "1", ContainerSpec(image="img", api_key="s3cret-key"))
    assert info.api_key == "s3cret-key" and (await rt.inspect("r1")).api_key == "s3cret-key"
    assert "s3cret-key" not in repr(info) and "s3cret-key" not in repr(rt.containers["r1"].spec)
    assert (await rt.start(KEY_A, "r2", "1", ContainerSpec(image="img"))).api_key is None


def test_a_flag_that_carries_the_key_is_masked_in_the_specs_repr():
    spec = ContainerSpec(image="img", args=("--api-key", "s3cret-key", "--port", "1"), api_key="s3cret-key")
    assert "s3cret-key" not in repr(spec) and "'--api-key', '***', '--port', '1'" in repr(spec)


# --- the launcher: a key per replica, sent by the probes ------------------------------------------


def intent(key: EndpointKey, image: dict, *, repository: str, accelerator="cpu", instance_type="intel-icl",
           instance_size="x1", env=None) -> SimpleNamespace:
    """What the launcher reads of an Intent: its key, revision and spec."""
    model = SimpleNamespace(repository=repository, revision=None, image=image, env=env or {}, secrets={},
                            command=None, args=None, task=None, framework=None, download_pattern=None)
    compute = SimpleNamespace(accelerator=accelerator, instance_type=instance_type, instance_size=instance_size,
                              scaling=SimpleNamespace(sleep_after_s=None))
    return SimpleNamespace(key=key, revision=1, spec=SimpleNamespace(name=key.name, compute=compute, model=model))


def launcher(runtime, session, tmp_path: Path, **kw) -> EngineLauncher:
    return EngineLauncher(
        runtime, session, inventory=[], allocator=GpuAllocator([]), downloads=tmp_path / "hub",
        ready_deadline_s=READY_DEADLINE_S, cpu_count=4, memory_bytes=16 * GIB, **kw,
    )


@pytest.fixture
async def keyed_engine():
    """An engine whose health route needs the key it was started with (as TEI's before 1.5.1), if
    it was given one; `seen` is the Authorization header of each request."""
    seen: list[str | None] = []
    expected: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        key = expected.get("key")
        ok = key is None or request.headers.get("Authorization") == f"Bearer {key}"
        return web.Response(status=200 if ok else 401)

    app = web.Application()
    app.router.add_get("/health", handler)
    server = TestServer(app)
    await server.start_server()
    yield SimpleNamespace(port=server.port, seen=seen, expected=expected)
    await server.close()


async def test_the_launcher_gives_each_replica_a_key_of_its_own_and_its_probes_send_it(tmp_path, keyed_engine):
    rt = FakeRuntime(address=lambda replica_id: f"127.0.0.1:{keyed_engine.port}")
    echo = intent(KEY_A, {"custom": {"url": ECHO_IMAGE, "healthRoute": "/health"}}, repository=str(tmp_path))
    async with aiohttp.ClientSession() as session:
        engines = launcher(rt, session, tmp_path)
        original_start = rt.start

        async def start(endpoint, replica_id, revision, spec, **kw):
            keyed_engine.expected["key"] = spec.api_key  # the engine is configured with the spec's key
            return await original_start(endpoint, replica_id, revision, spec, **kw)

        rt.start = start
        first = await engines.launch(echo, "r1", (), lambda message: None)
        first_key = first.api_key
        second = await engines.launch(echo, "r2", (), lambda message: None)
        assert first_key and second.api_key and first_key != second.api_key
        assert len(first_key) >= 43  # secrets.token_urlsafe(32): 256 bits
        # The engine gets the key; it is a secret, never in the plain env nor in a repr.
        spec = rt.containers["r2"].spec
        assert spec.secret_env["ECHO_API_KEY"] == second.api_key == spec.api_key
        assert "ECHO_API_KEY" not in spec.env and second.api_key not in repr(spec)
        # Readiness and liveness probes send it (the health route here needs it).
        assert keyed_engine.seen[-1] == f"Bearer {second.api_key}"
        assert await engines.healthy(second)
        assert not await engines.healthy(first)  # the engine now holds the second replica's key only


async def test_a_custom_image_gets_no_key_and_its_probes_send_none(tmp_path, keyed_engine):
    rt = FakeRuntime(address=lambda replica_id: f"127.0.0.1:{keyed_engine.port}")
    other = intent(KEY_A, {"custom": {"url": "ghcr.io/acme/server:1", "healthRoute": "/health"}}, repository=str(tmp_path))
    async with aiohttp.ClientSession() as session:
        info = await launcher(rt, session, tmp_path).launch(other, "r1", (), lambda message: None)
    spec = rt.containers["r1"].spec
    assert (info.api_key, spec.api_key, dict(spec.secret_env)) == (None, None, {})
    assert keyed_engine.seen and set(keyed_engine.seen) == {None}  # no Authorization header at all


# --- on the real Docker engine --------------------------------------------------------------------


async def exec_python(container_id: str, code: str, *args: str) -> int:
    """Run a Python one-liner inside a container; its exit status."""
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/docker", "exec", container_id, "python3", "-c", code, *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))"


async def address_on_its_network(container_id: str) -> tuple[str, str]:
    """(network name, IP address) of a container on its only network: read, never connected to from here."""
    [(name, settings)] = (await docker_inspect("container", container_id))["NetworkSettings"]["Networks"].items()
    return name, settings["IPAddress"]


@pytest.mark.docker
async def test_endpoints_are_on_networks_of_their_own_and_cannot_reach_each_other(docker_runtime, docker_key):
    other = EndpointKey(docker_key.namespace, "other")
    spec = ContainerSpec(image=ECHO_IMAGE)
    a1, a2, b1 = await asyncio.gather(
        docker_runtime.start(docker_key, f"{docker_key.namespace}-a1", "1", spec),
        docker_runtime.start(docker_key, f"{docker_key.namespace}-a2", "1", spec),
        docker_runtime.start(other, f"{docker_key.namespace}-b1", "1", spec),
    )
    (net_a1, ip_a1), (net_a2, _), (net_b1, ip_b1) = [await address_on_its_network(i.container_id) for i in (a1, a2, b1)]
    # Exactly the endpoint's own network each, never Docker's default bridge; one per endpoint.
    assert net_a1 == net_a2 == network_name(None, docker_key) and net_b1 == network_name(None, other)
    assert await engine_networks(docker_key.namespace) == sorted([net_a1, net_b1])
    assert (await docker_inspect("network", net_a1))["Labels"] == network_labels(None, docker_key)
    for info in (a1, a2, b1):
        assert (await docker_inspect("container", info.container_id))["HostConfig"]["NetworkMode"] != "bridge"
        assert info.address.startswith("127.0.0.1:")  # the proxy still reaches it on loopback
    # From inside: a replica reaches its sibling, never another endpoint's replica.
    assert await exec_python(a2.container_id, CONNECT, ip_a1, "80", str(CONNECT_TIMEOUT_S)) == 0
    assert await exec_python(a2.container_id, CONNECT, ip_b1, "80", str(CONNECT_TIMEOUT_S)) != 0
    assert await exec_python(b1.container_id, CONNECT, ip_a1, "80", str(CONNECT_TIMEOUT_S)) != 0


@pytest.mark.docker
async def test_two_runtimes_starting_one_endpoint_at_once_share_its_network(docker_runtime, docker_key):
    """Two endpointd processes (or runtimes) racing: Docker would make a network of the same name
    twice; every start still succeeds and what is left is the endpoint's own network(s), gone
    with remove_network."""
    runtimes = [DockerRuntime(instance="race"), DockerRuntime(instance="race")]
    try:
        started = await asyncio.gather(*(
            rt.start(docker_key, f"{docker_key.namespace}-r{i}", "1", ContainerSpec(image=ECHO_IMAGE))
            for i, rt in enumerate(runtimes)
        ))
        assert all(info.address for info in started)
        assert set(await engine_networks(docker_key.namespace)) == {network_name("race", docker_key)}
        for info in started:
            await runtimes[0].stop(info.replica_id, grace_s=0)
        await runtimes[1].remove_network(docker_key)
        assert await engine_networks(docker_key.namespace) == []
    finally:
        for rt in runtimes:
            await rt.close()


@pytest.mark.docker
async def test_a_network_of_the_endpoints_name_that_endpointd_did_not_make_is_never_joined(docker_runtime, docker_key):
    name = network_name(None, docker_key)
    await docker_cli("network", "create", "--label", f"endpointd.namespace={docker_key.namespace}", name)
    with pytest.raises(RuntimeFailure, match=f"create network {name}: a network of this name exists that endpointd did not make"):
        await docker_runtime.start(docker_key, f"{docker_key.namespace}-f1", "1", ContainerSpec(image=ECHO_IMAGE))
    assert await docker_runtime.list(docker_key) == []
    await docker_runtime.remove_network(docker_key)  # not ours: left alone
    assert await engine_networks(docker_key.namespace) == [name]


@pytest.mark.docker
async def test_a_replica_serves_only_with_its_key_which_a_restart_reads_back(docker_runtime, docker_key, tmp_path):
    async with aiohttp.ClientSession() as session:
        engines = launcher(docker_runtime, session, tmp_path)
        info = await engines.launch(intent(docker_key, {"custom": {"url": ECHO_IMAGE}}, repository=str(tmp_path)),
                                    f"{docker_key.namespace}-k1", (), lambda message: None)
        url = f"http://{info.address}"
        assert info.api_key and info.address.startswith("127.0.0.1:")
        async with session.get(f"{url}/health") as response:
            assert response.status == 200  # readiness is probed without the key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": info.api_key}):
            async with session.post(f"{url}/generate", json={"inputs": "hi"}, headers=headers) as response:
                assert response.status == 401 and "error" in await response.json()
        auth = {"Authorization": f"Bearer {info.api_key}"}
        async with session.post(f"{url}/generate", json={"inputs": "hi"}, headers=auth) as response:
            assert response.status == 200 and await response.json() == {"generated_text": "hi "}
        # A restarted endpointd finds the key on the container it adopts.
        fresh = DockerRuntime()
        try:
            [found] = await fresh.list(docker_key)
        finally:
            await fresh.close()
        assert found.api_key == info.api_key and await engines.healthy(found)


@pytest.mark.docker
async def test_replicas_run_without_privileges_and_within_their_instance(docker_runtime, docker_key, tmp_path):
    async with aiohttp.ClientSession() as session:
        engines = launcher(docker_runtime, session, tmp_path)
        info = await engines.launch(intent(docker_key, {"custom": {"url": ECHO_IMAGE}}, repository=str(tmp_path)),
                                    f"{docker_key.namespace}-p1", (), lambda message: None)
    host = (await docker_inspect("container", info.container_id))["HostConfig"]
    assert (host["CapDrop"], host["CapAdd"]) == (["ALL"], ["NET_BIND_SERVICE"])
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert (host["PidsLimit"], host["Privileged"]) == (PIDS_LIMIT, False)
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"]) == (2 * GIB, 2 * GIB, 1_000_000_000)  # cpu x1
    assert host["Binds"] == [f"{tmp_path}:/repository:ro"]  # the model, read-only: nothing else of the host
    assert not host["Devices"] and not host["DeviceRequests"] and not host.get("Mounts")
    network = await docker_inspect("network", network_name(None, docker_key))
    assert (host["PidMode"], host["IpcMode"], host["NetworkMode"]) == ("", "private", network["Id"])  # joined by id
    # What the engine's process really has: only CAP_NET_BIND_SERVICE (bit 10), no new privileges.
    status = await docker_cli("exec", info.container_id, "cat", "/proc/1/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert (fields["CapEff"].strip(), fields["CapBnd"].strip(), fields["NoNewPrivs"].strip()) == (
        f"{1 << 10:016x}", f"{1 << 10:016x}", "1")
    pids_max = await docker_cli("exec", info.container_id, "sh", "-c",
                                "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max")
    assert pids_max.strip() == str(PIDS_LIMIT)


async def test_an_engine_that_reads_no_model_gets_nothing_fetched_or_mounted(tmp_path, keyed_engine):
    """The echo engine named with a Hub id (the shipped catalog recipe): no download is tried (this
    host has no Hub) and nothing of the host is mounted; an engine that reads its model still gets it."""
    rt = FakeRuntime(address=lambda replica_id: f"127.0.0.1:{keyed_engine.port}")
    specs = []
    original_start = rt.start

    async def start(endpoint, replica_id, revision, spec, **kw):
        specs.append(spec)
        return await original_start(endpoint, replica_id, revision, spec, **kw)

    rt.start = start
    said: list[str] = []
    async with aiohttp.ClientSession() as session:
        engines = launcher(rt, session, tmp_path)
        echo = intent(KEY_A, {"custom": {"url": ECHO_IMAGE, "healthRoute": "/health"}}, repository="endpointd/echo")
        await engines.launch(echo, "r1", (), said.append)
        assert specs[-1].mounts == () and not any("fetching model artifacts" in line for line in said)
        other = intent(KEY_A, {"custom": {"url": "acme/server:1", "healthRoute": "/health"}}, repository=str(tmp_path))
        await engines.launch(other, "r2", (), said.append)
        assert [m.source for m in specs[-1].mounts] == [str(tmp_path)]
