"""endpointd in a container (its own image): replicas on their endpoint networks, reached by
container name, with no port published; the host mode exactly as before everywhere else. Unit
tables for the container configuration and paths, and the real Docker engine with a stand-in
"endpointd" container (the full image runs in tests/e2e/test_e2e_image.py)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from engines import docker as docker_module
from engines.docker import DockerRuntime, create_config, replica_info, translate_path
from engines.images import ECHO_IMAGE
from engines.runtime import ContainerSpec, ContainerStatus, EndpointKey, Mount, RuntimeFailure, network_name
from tests.docker_fixtures import docker_cli

KEY = EndpointKey("ns", "e1")


def test_without_publishing_the_port_is_exposed_but_bound_nowhere():
    spec = ContainerSpec(image="img", port=5000)
    published = create_config(KEY, "r1", "1", spec, "127.0.0.1", "net")
    hidden = create_config(KEY, "r1", "1", spec, "127.0.0.1", "net", publish=False)
    assert published["HostConfig"]["PortBindings"] == {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert hidden["HostConfig"]["PortBindings"] == {}
    assert hidden["ExposedPorts"] == {"5000/tcp": {}}
    assert {k: v for k, v in hidden.items() if k != "HostConfig"} == {k: v for k, v in published.items() if k != "HostConfig"}


INSPECT = {
    "Id": "abc", "Name": "/endpointd-ns-e1-r1",
    "Config": {"Labels": {"endpointd.replica": "r1", "endpointd.namespace": "ns", "endpointd.name": "e1",
                          "endpointd.port": "5000"}},
    "State": {"Status": "running"},
    "NetworkSettings": {"Ports": {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}},
}


def test_a_replicas_address_is_its_name_in_container_mode_its_published_port_else():
    assert replica_info(INSPECT).address == "127.0.0.1:49153"
    assert replica_info(INSPECT, by_name=True).address == "endpointd-ns-e1-r1:5000"
    exited = {**INSPECT, "State": {"Status": "exited", "ExitCode": 1}}
    assert replica_info(exited, by_name=True).address is None


MOUNTS = [("/data/models", "/srv/cache"), ("/data", "/var/lib/docker/volumes/d/_data"), ("/models", "/srv/models")]


@pytest.mark.parametrize("path, host", [
    ("/data/x/y", "/var/lib/docker/volumes/d/_data/x/y"),
    ("/data", "/var/lib/docker/volumes/d/_data"),
    ("/data/models/hub/snap", "/srv/cache/hub/snap"),  # the longest mount wins
    ("/models/m", "/srv/models/m"),
])
def test_a_path_of_endpointds_container_is_its_volumes_host_path(path, host):
    assert translate_path(path, MOUNTS) == host


@pytest.mark.parametrize("path", ["/datafile/x", "/etc/passwd", "/modelsx"])
def test_a_path_on_no_volume_cannot_be_mounted_and_says_why(path):
    with pytest.raises(RuntimeFailure, match="on none of its volumes.*docs/compose.yaml"):
        translate_path(path, MOUNTS)


@pytest.mark.docker
async def test_the_host_mode_stays_where_no_container_of_the_engine_is_ours(docker_engine, monkeypatch, tmp_path):
    # This machine's own dockerd may itself run in a container: /.dockerenv alone is not enough.
    marker = tmp_path / ".dockerenv"
    marker.write_text("")
    monkeypatch.setattr(docker_module, "DOCKERENV", marker)
    monkeypatch.setattr(docker_module.socket, "gethostname", lambda: "0123456789ab")  # no such container
    for runtime in (DockerRuntime(), DockerRuntime(self_container="host")):
        try:
            assert await runtime.own_container() is None
            assert runtime.host_path("/anything") == "/anything"
        finally:
            await runtime.close()
    runtime = DockerRuntime(self_container="no-such-endpointd-container")
    try:
        with pytest.raises(RuntimeFailure, match="has no such container: set ENDPOINTD_SELF_CONTAINER"):
            await runtime.own_container()
    finally:
        await runtime.close()


@pytest.mark.docker
async def test_in_container_mode_replicas_are_unpublished_and_endpointds_container_joins_their_network(
    docker_runtime, docker_key, tmp_path
):
    """A stand-in for endpointd's container (any container with a volume); the runtime is told it
    is that container, as ENDPOINTD_SELF_CONTAINER tells it."""
    stand_in = f"tkcm-{uuid.uuid4().hex[:8]}"
    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    await docker_cli("run", "-d", "--name", stand_in, "-v", f"{models}:/models:ro", ECHO_IMAGE)
    runtime = DockerRuntime(self_container=stand_in)
    try:
        own = await runtime.own_container()
        assert own and own == json.loads(await docker_cli("inspect", stand_in))[0]["Id"]
        assert runtime.host_path("/models/m") == f"{models}/m"

        spec = ContainerSpec(image=ECHO_IMAGE, mounts=(Mount(source="/models/m", target="/repository"),))
        info = await runtime.start(docker_key, "r1", "1", spec)
        assert info.status is ContainerStatus.RUNNING
        assert info.address == f"{info.container_name}:80"
        replica = json.loads(await docker_cli("inspect", info.container_name))[0]
        assert not any(replica["NetworkSettings"]["Ports"].values())  # nothing on the host
        assert [(m["Source"], m["Destination"]) for m in replica["Mounts"]] == [(f"{models}/m", "/repository")]
        network = network_name(None, docker_key)
        joined = json.loads(await docker_cli("inspect", stand_in))[0]["NetworkSettings"]["Networks"]
        assert network in joined
        # endpointd reaches it by name on that network: from the stand-in, as endpointd would, once
        # the echo engine in it listens (running is not yet listening).
        reach = f"import urllib.request; urllib.request.urlopen('http://{info.address}/health', timeout=10)"
        async with asyncio.timeout(60):
            while True:
                try:
                    await docker_cli("exec", stand_in, "python3", "-c", reach)
                    break
                except AssertionError as error:
                    if "Connection refused" not in str(error):
                        raise
                    await asyncio.sleep(0.2)
        # A runtime made anew (a restart) finds the replica by its name too, and stays on the network.
        fresh = DockerRuntime(self_container=stand_in)
        try:
            [adopted] = await fresh.list(docker_key)
            assert adopted.address == info.address
        finally:
            await fresh.close()

        await runtime.stop("r1", grace_s=0)
        await runtime.remove_network(docker_key)  # leaves it first, so it can go
        networks = (await docker_cli("network", "ls", "--format", "{{.Name}}")).split()
        assert network not in networks
    finally:
        await runtime.close()
        await docker_cli("rm", "-f", stand_in)
