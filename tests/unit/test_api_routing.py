"""On one listener, an endpoint's route domain owns every path, the API's and /metrics included;
elsewhere the API answers JSON. The listener is the production one (proxy/server.py `listen`):
the raw server in front, the API's aiohttp app behind it."""

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from autoscaler.api.app import add_api
from autoscaler.api.endpoints import ManagementApi
from proxy.core.config import ProxyConfig
from proxy.core.control import AuthType, InMemoryControlPlane, Replica, RouteEntry
from proxy.core.limits import LimitTable
from proxy.core.pipeline import Pipeline
from proxy.management.app import add_proxy
from proxy.server import listen


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
    add_api(app, ManagementApi.__new__(ManagementApi), logs=None, analytics=None, limits=LimitTable())  # routing only: no handler is reached below
    listening = await listen(app, ProxyConfig(host="127.0.0.1", port=0))
    async with aiohttp.ClientSession(f"http://127.0.0.1:{listening.port}") as session:
        yield session
    await listening.shutdown(0)
    await replica.close()


@pytest.mark.parametrize("path", ["/v2/nope", "/v2/endpoint/acme", "/api/whoami-v2", "/metrics", "/"])
async def test_the_route_domain_owns_every_path(client, path):
    async with client.get(path, headers={"Host": "e1.example:8080"}) as r:
        assert (r.status, await r.json()) == (200, {"path": path})


async def test_off_the_route_domain_the_api_answers_json_and_asks_for_a_token_first(client):
    async with client.get("/v2/nope") as r:  # unknown with a token is a JSON 404: tests/unit/test_api_hostile.py
        assert r.status == 401
        assert (await r.json()) == {
            "error": "this call needs a token: send the header 'Authorization: Bearer <token>'"}
