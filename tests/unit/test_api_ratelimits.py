"""`/v2/ratelimits/{ns}` in process on a real store, through real HTTP: admins set and remove a
namespace's override, members read it, and the proxy's table follows at once."""

from __future__ import annotations

import pytest

from proxy.core.limits import Limit, Override
from tests.api_harness import ApiWorld


@pytest.fixture
async def api(tmp_path):
    w = await ApiWorld().start(tmp_path)
    yield w
    await w.close()


async def call(api, method, path, who="admin", **kw):
    r = await api.client.request(method, path, headers=api.auth(who), **kw)
    return r.status, await r.json()


async def test_an_admin_sets_a_namespaces_limits_the_proxy_follows_and_members_read_them(api):
    status, body = await call(api, "PUT", "/v2/ratelimits/acme", json={"rpm": 600})
    assert status == 200
    assert body == {"namespace": "acme", "rpm": 600, "concurrent": 0, "override": {"rpm": 600, "concurrent": None},
                    "defaults": {"rpm": 0, "concurrent": 0}, "token": {"rpm": 0, "concurrent": 0}}
    assert api.pipeline.limits.namespace("acme") == Limit(600, 0)
    assert await api.store.rate_limits() == {"acme": Override(600, None)}
    assert await call(api, "GET", "/v2/ratelimits/acme", who="alice") == (200, body)  # a member of acme
    status, body = await call(api, "DELETE", "/v2/ratelimits/acme")
    assert (status, body["override"], body["rpm"]) == (200, None, 0)
    assert api.pipeline.limits.namespace("acme") == Limit() and await api.store.rate_limits() == {}


@pytest.mark.parametrize(("method", "who", "status", "sentence"), [
    ("PUT", "alice", 403, "only an admin may set a namespace's rate limits"),
    ("DELETE", "alice", 403, "only an admin may remove a namespace's rate limits"),
    ("GET", "bob", 403, "user bob may not manage namespace acme"),
])
async def test_only_admins_write_and_only_members_read(api, method, who, status, sentence):
    got, body = await call(api, method, "/v2/ratelimits/acme", who=who, json={"rpm": 1})
    assert (got, body["error"].startswith(sentence)) == (status, True), body
    assert not api.pipeline.limits.overrides


@pytest.mark.parametrize(("body", "sentence"), [
    ([1], 'the body must be a JSON object such as {"rpm": 600, "concurrent": 8}'),
    ({}, "give rpm, concurrent or both; to go back to the defaults, DELETE the namespace's rate limits"),
    ({"rpm": None}, "give rpm, concurrent or both"),
    ({"rpm": -1}, "rpm must be an integer between 0 (unlimited) and 10000000, or null (the default); got -1"),
    ({"concurrent": 1.5}, "concurrent must be an integer between 0 (unlimited) and 1000000"),
    ({"concurrent": True}, "concurrent must be an integer"),
    ({"rpm": "60"}, "rpm must be an integer"),
    ({"rpm": 60, "burst": 5}, "unknown field 'burst': a rate limit has rpm and concurrent"),
])
async def test_a_bad_body_is_a_400_that_says_what_to_send(api, body, sentence):
    status, answer = await call(api, "PUT", "/v2/ratelimits/acme", json=body)
    assert status == 400 and answer["error"].startswith(sentence), answer
    assert not api.pipeline.limits.overrides


async def test_no_such_namespace_and_no_override_are_404s(api):
    status, body = await call(api, "PUT", "/v2/ratelimits/nobody", json={"rpm": 5})
    assert (status, body["error"]) == (404, "no user or org is named nobody; add it with `endpointd users add` first")
    status, body = await call(api, "DELETE", "/v2/ratelimits/acme")
    assert (status, body["error"]) == (404, "namespace acme has no rate limits of its own: the defaults hold")
