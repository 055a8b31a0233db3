"""Who may read /metrics (an admin, or a token with the `metrics` scope), on the main listener and
on the optional metrics listener; and the replica's own API key sent upstream in place of the
caller's token."""

import pytest
from aiohttp import web

from proxy.core.auth import TokenCache, authorize_scope
from proxy.core.control import AuthType, Identity, InMemoryControlPlane, Replica, hash_token
from proxy.core.errors import Forbidden, Unauthorized
from tests.proxy_harness import bearer, free_port

EP = "/endpoints/acme/e1"

METRICS_ACCESS = [
    # caller,      status
    (None, 401),
    ("invalid", 401),
    ("owner", 403),  # a valid token, without admin or the scope
    ("member", 403),
    ("admin", 200),
    ("scraper", 200),  # the metrics scope
]


def headers_of(caller: str | None) -> dict[str, str]:
    if caller is None:
        return {}
    if caller == "invalid":
        return {"Authorization": "Bearer not-a-token"}
    return bearer(caller)


async def check_metrics_access(harness, url: str, caller: str | None, status: int) -> None:
    async with harness.session.get(url, headers=headers_of(caller)) as r:
        assert r.status == status, await r.text()
        if status == 200:
            assert "endpointd_proxy_requests_total" in await r.text()
            return
        body = await r.json()
        assert body["error"] and r.headers["X-Error-Message"] == body["error"]
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            assert "metrics" in body["error"]


@pytest.mark.parametrize("caller, status", METRICS_ACCESS)
async def test_metrics_needs_an_admin_or_the_metrics_scope(harness, caller, status):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start()
    async with harness.request("GET", EP):
        pass
    await check_metrics_access(harness, harness.url("/metrics"), caller, status)


@pytest.mark.parametrize("caller, status", METRICS_ACCESS)
async def test_the_metrics_listener_has_the_same_rule(harness, caller, status):
    await harness.start(metrics_port=free_port())
    port = harness.proxy.listening.metrics_port
    await check_metrics_access(harness, f"http://127.0.0.1:{port}/metrics", caller, status)


async def test_the_metrics_listener_serves_nothing_else(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,))
    await harness.start(metrics_port=free_port())
    port = harness.proxy.listening.metrics_port
    for path in (EP, "/", "/v2/endpoint/acme"):
        async with harness.session.get(f"http://127.0.0.1:{port}{path}", headers=bearer("admin")) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "this listener serves only GET /metrics"
    assert up.seen == []
    async with harness.request("GET", EP) as r:  # the main listener is unchanged
        assert r.status == 200


async def test_metrics_on_a_route_domain_is_the_endpoints_path_without_a_token(harness):
    up = await harness.upstream()
    harness.endpoint(upstreams=(up,), domain="e1.example")
    await harness.start()
    async with harness.request("GET", "/metrics", headers={"Host": "e1.example"}) as r:
        assert r.status == 200 and (await r.json())["path"] == "/metrics"


@pytest.mark.parametrize(
    "identity, allowed",
    [
        (Identity("u"), False),
        (Identity("u", scopes=frozenset({"other"})), False),
        (Identity("u", scopes=frozenset({"metrics"})), True),
        (Identity("u", is_admin=True), True),
    ],
)
async def test_authorize_scope(identity, allowed):
    control = InMemoryControlPlane()
    control.add_token("t", identity)
    tokens = TokenCache(control, 5.0)
    if allowed:
        assert await authorize_scope("Bearer t", tokens, "metrics", "/metrics") == identity
    else:
        with pytest.raises(Forbidden):
            await authorize_scope("Bearer t", tokens, "metrics", "/metrics")
    with pytest.raises(Unauthorized):
        await authorize_scope(None, tokens, "metrics", "/metrics")


# -- replica API keys -------------------------------------------------------------------------


async def echo_authorization(request):
    return web.json_response({"authorization": request.headers.get("Authorization")})


async def test_a_replica_with_an_api_key_gets_it_instead_of_the_callers_token(harness):
    up = await harness.upstream(echo_authorization)
    harness.endpoint(auth=AuthType.AUTHENTICATED, upstreams=(up,), api_keys=("engine-key-0",))
    await harness.start()
    async with harness.request("POST", EP, headers=bearer("owner")) as r:
        assert r.status == 200
        assert (await r.json())["authorization"] == "Bearer engine-key-0"


async def test_a_replica_without_an_api_key_gets_no_authorization(harness):
    up = await harness.upstream(echo_authorization)
    harness.endpoint(auth=AuthType.AUTHENTICATED, upstreams=(up,))
    await harness.start()
    async with harness.request("POST", EP, headers=bearer("owner")) as r:
        assert (await r.json())["authorization"] is None


async def test_a_retry_sends_the_key_of_the_replica_it_goes_to(harness):
    up = await harness.upstream(echo_authorization)
    # r0 refuses connections and has a key; r1 has none: a retry must not carry r0's key.
    harness.endpoint(upstreams=(f"127.0.0.1:{free_port()}", up), api_keys=("key-of-r0", None))
    await harness.start()
    for _ in range(10):  # ties are random: r0 is tried first about half the time
        async with harness.request("POST", EP) as r:
            assert r.status == 200
            assert (await r.json())["authorization"] is None


def test_the_api_key_is_kept_out_of_repr():
    replica = Replica("r0", "127.0.0.1:1", api_key="s3cret")
    assert "s3cret" not in repr(replica) and "s3cret" not in str(replica)
    assert replica.api_key == "s3cret"
    assert Replica("r0", "127.0.0.1:1").api_key is None


def test_static_routes_give_users_scopes():
    from proxy.static_routes import RoutesError, parse

    control = parse({"users": [{"name": "prom", "tokens": ["t"], "scopes": ["metrics"]}]})
    assert control.tokens[hash_token("t")] == Identity("prom", scopes=frozenset({"metrics"}))
    with pytest.raises(RoutesError, match=r"users\[0\].scopes may hold only metrics"):
        parse({"users": [{"name": "prom", "tokens": ["t"], "scopes": ["root"]}]})
