"""On one listener, an endpoint's route domain owns every path, the API's and /metrics included;
elsewhere the API's unknown paths are JSON 404s."""

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.api import ManagementApi, add_api
from proxy.app import add_proxy
from proxy.config import ProxyConfig
from proxy.control import AuthType, InMemoryControlPlane, Replica, RouteEntry
from proxy.pipeline import Pipeline


@pytest.fixture
async def client():
    upstream = web.Application()

    async def echo_path(request):
        return web.json_response({"path": request.raw_path})

    upstream.router.add_route("*", "/{tail:.*}", echo_path)
    replica = TestServer(upstream, host="127.0.0.1")
    await replica.start_server()
    control = InMemoryControlPlane()
    control.put(RouteEntry("acme", "e1", AuthType.PUBLIC, replicas=(Replica("r0", f"127.0.0.1:{replica.port}"),),
                           domain="e1.example"))
    app = web.Application()
    add_proxy(app, Pipeline(ProxyConfig(), control))
    add_api(app, ManagementApi.__new__(ManagementApi))  # routing only: no handler is reached below
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c
    await replica.close()


@pytest.mark.parametrize("path", ["/v2/nope", "/v2/endpoint/acme", "/api/whoami-v2", "/metrics", "/"])
async def test_the_route_domain_owns_every_path(client, path):
    r = await client.get(path, headers={"Host": "e1.example:8080"})
    assert (r.status, await r.json()) == (200, {"path": path})


async def test_unknown_api_paths_are_json_404s(client):
    r = await client.get("/v2/nope")
    assert r.status == 404
    assert (await r.json()) == {"error": "Not Found: GET /v2/nope"}
