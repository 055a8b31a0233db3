"""A custom image with no health route is ready once its port accepts connections: the TCP probe,
in-process (a quiet server, a proxy with nothing behind it, nothing at all), and on the real Docker
engine with a container that serves no /health, behind Docker's own port proxy."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from engines import readiness
from engines.images import ECHO_IMAGE
from engines.runtime import ContainerSpec, ContainerStatus
from tests.docker_fixtures import docker_cli


async def _server(on_connect) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_quiet_server_accepts():
    async def wait_for_request(reader, writer):
        await reader.read(100)
        writer.close()

    server, address = await _server(wait_for_request)
    async with server:
        assert await readiness.accepts_connections(address)


async def test_a_server_that_talks_first_accepts():
    async def banner(reader, writer):
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await reader.read(100)
        writer.close()

    server, address = await _server(banner)
    async with server:
        assert await readiness.accepts_connections(address)


async def test_a_proxy_that_closes_at_once_is_not_listening():
    """docker-proxy's way when nothing listens in the container: accept, then close."""
    async def close_at_once(reader, writer):
        writer.close()

    server, address = await _server(close_at_once)
    async with server:
        assert not await readiness.accepts_connections(address)


async def test_nothing_listening_is_not_ready():
    server, address = await _server(lambda r, w: w.close())
    server.close()
    await server.wait_closed()
    assert not await readiness.accepts_connections(address)
    assert not await readiness.accepts_connections("not-an-address")


# Serves GET / (a directory listing) on 8000 and no /health, once /tmp/go exists: the test decides
# when the port starts listening.
NO_HEALTH = (
    "import os, time, http.server\n"
    "while not os.path.exists('/tmp/go'): time.sleep(0.05)\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 8000), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
)


@pytest.mark.docker
async def test_an_image_without_health_route_is_ready_once_its_port_listens(docker_runtime, docker_key):
    spec = ContainerSpec(image=ECHO_IMAGE, port=8000, entrypoint=("python3", "-c"), args=(NO_HEALTH,))
    info = await docker_runtime.start(docker_key, "r1", "rev", spec)
    assert info.status is ContainerStatus.RUNNING and info.address is not None
    # Published on 127.0.0.1: docker-proxy accepts, finds nothing behind, and closes.
    assert not await readiness.accepts_connections(info.address)
    async with aiohttp.ClientSession() as session:
        # The health route would never answer 200: the HTTP check gives up at its deadline.
        with pytest.raises(readiness.ReplicaStartTimeout, match="/health did not answer 200 within 1 s"):
            await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=1)
        await docker_cli("exec", info.container_name, "touch", "/tmp/go")
        ready = await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=60, tcp=True)
        assert ready.replica_id == "r1"
        async with session.get(f"http://{ready.address}/health") as response:
            assert response.status == 404  # still no health route: ready all the same


@pytest.mark.docker
async def test_a_port_that_never_listens_times_out_saying_so(docker_runtime, docker_key):
    spec = ContainerSpec(image=ECHO_IMAGE, port=8000, entrypoint=("python3", "-c"), args=(NO_HEALTH,))
    info = await docker_runtime.start(docker_key, "r2", "rev", spec)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(readiness.ReplicaStartTimeout, match="its port did not accept connections within 1 s"):
            await readiness.wait_ready(docker_runtime, info, session=session, deadline_s=1, tcp=True)
