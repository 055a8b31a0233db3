"""Quotas in the management API, in process on a real store through real HTTP (tests/api_harness.py):
the admin's routes, who may read and write them, the 409 for a create or update that can never
fit, and what a namespace under its quota sees while another namespace goes on unaffected. Each
replica of the harness's endpoints is an x1 CPU instance: 1 CPU, no memory limit."""

from __future__ import annotations

import pytest

from tests.api_harness import ApiWorld

CPU_FULL = ("namespace acme's quota of 2 CPUs is reached (2 CPUs in use by 2 replicas; this endpoint's x1 instance "
            "needs 1 CPU)")


@pytest.fixture
async def api(tmp_path):
    w = await ApiWorld().start(tmp_path)
    w.world.launcher.cpus_per_replica = 1
    yield w
    await w.close()


async def call(api, method, path, who="alice", **kw):
    r = await api.client.request(method, path, headers=api.auth(who), **kw)
    return r.status, await r.json()


def endpoint(api, name, low=1, high=1):
    body = api.body(name)
    body["compute"]["scaling"] = {"minReplica": low, "maxReplica": high}
    return body


async def settle(api):
    for _ in range(3):
        await api.world.settle()
        api.world.now += 2


async def test_an_admin_sets_reads_lists_and_lifts_a_quota_each_write_audited(api):
    status, body = await call(api, "PUT", "/v2/quotas/acme", "admin",
                              json={"gpus": 0, "cpus": 2, "memory": "32GiB", "replicas": 6, "endpoints": 10})
    quota = {"gpus": 0, "cpus": 2, "memory": 32 << 30, "replicas": 6, "endpoints": 10}
    nothing = {"gpus": 0, "cpus": 0, "memory": 0, "replicas": 0, "endpoints": 0}
    assert (status, body) == (200, {"namespace": "acme", "quota": quota, "use": nothing})
    assert await call(api, "GET", "/v2/quotas/acme") == (200, body)  # a member reads it
    assert await call(api, "GET", "/v2/quotas", "admin") == (200, {"items": [body]})

    status, body = await call(api, "PUT", "/v2/quotas/acme", "admin", json={"cpus": 0.5})  # every limit at once
    assert body["quota"] == {"gpus": None, "cpus": 0.5, "memory": None, "replicas": None, "endpoints": None}
    assert (await call(api, "DELETE", "/v2/quotas/acme", "admin"))[0] == 200
    status, body = await call(api, "GET", "/v2/quotas/acme")
    assert status == 200 and set(body["quota"].values()) == {None}
    assert await call(api, "DELETE", "/v2/quotas/acme", "admin") == (404, {"error": "namespace acme has no quota"})
    assert await call(api, "GET", "/v2/quotas", "admin") == (200, {"items": []})

    items = (await call(api, "GET", "/v2/audit/acme"))[1]["items"]
    assert [(i["action"], i["user"], i["endpoint"]) for i in items] == [
        ("quota-unset", "admin", ""), ("quota-set", "admin", ""), ("quota-set", "admin", "")]
    assert items[2]["details"] == quota


@pytest.mark.parametrize("method, path, who, status, error", [
    ("GET", "/v2/quotas/acme", "bob", 403, "user bob may not manage namespace acme: it is neither that user nor a "
                                           "member of that org"),
    ("PUT", "/v2/quotas/acme", "alice", 403, "only an admin may set the quota of namespace acme"),
    ("DELETE", "/v2/quotas/acme", "alice", 403, "only an admin may remove the quota of namespace acme"),
    ("GET", "/v2/quotas", "alice", 403, "only an admin may list every namespace's quota"),
    ("GET", "/v2/quotas/nobody", "admin", 404, "namespace nobody does not exist; create the user or org first "
                                               "(`endpointd users add`)"),
    ("PUT", "/v2/quotas/nobody", "admin", 404, "namespace nobody does not exist; create the user or org first "
                                               "(`endpointd users add`)"),
])
async def test_who_may_read_and_write_quotas(api, method, path, who, status, error):
    kw = {"json": {"cpus": 1}} if method == "PUT" else {}
    assert await call(api, method, path, who, **kw) == (status, {"error": error})


@pytest.mark.parametrize("body, error", [
    ({"cpus": -1}, "quota cpus must be from 0 to 65536; got -1"),
    ({"gpus": "two"}, "quota gpus must be a whole number from 0 to 1024 or null (unlimited); got 'two'"),
    ({"memory": "32GB"}, "quota memory '32GB' is not a size: a number of bytes, or a number with one of the units "
                         "KiB, MiB, GiB, TiB (e.g. 32GiB)"),
    ({"rpm": 10}, "'rpm' is not a quota limit; the limits are: endpoints, replicas, gpus, cpus, memory"),
    ([1], "a quota is a JSON object with any of the keys endpoints, replicas, gpus, cpus, memory"),
])
async def test_a_bad_quota_is_a_400_saying_why(api, body, error):
    assert await call(api, "PUT", "/v2/quotas/acme", "admin", json=body) == (400, {"error": error})
    assert await call(api, "GET", "/v2/quotas", "admin") == (200, {"items": []})  # nothing was set


async def test_a_team_at_its_quota_gets_409s_and_waits_while_another_namespace_is_unaffected(api):
    assert (await call(api, "PUT", "/v2/quotas/acme", "admin", json={"cpus": 2, "endpoints": 3}))[0] == 200
    for name in ("e1", "e2"):
        assert (await call(api, "POST", "/v2/endpoint/acme", json=endpoint(api, name, 1, 2)))[0] == 200
    await settle(api)

    assert await call(api, "POST", "/v2/endpoint/acme", json=endpoint(api, "e3")) == (409, {"error": (
        "endpoint acme/e3 is not created: namespace acme's quota of 2 CPUs cannot fit it: 2 CPUs in use and it asks "
        "for 1 CPU more (in use: the minReplica of acme's other endpoints that are neither paused nor scaled to zero; "
        "asked: minReplica 1 of intel-icl x1); lower minReplica, pause or scale to zero another endpoint, or ask an "
        "admin to raise the quota")})
    # minReplica 0 could fit one day: it is created, and waits for the quota's room
    assert (await call(api, "POST", "/v2/endpoint/acme", json=endpoint(api, "e3", 0, 1)))[0] == 200
    await settle(api)
    status, body = await call(api, "GET", "/v2/endpoint/acme/e3")
    assert (body["status"]["state"], body["status"]["message"]) == ("pending", f"waiting for capacity: {CPU_FULL}")
    assert await call(api, "POST", "/v2/endpoint/acme", json=endpoint(api, "e4", 0, 1)) == (409, {"error": (
        "endpoint acme/e4 is not created: namespace acme's quota of 3 endpoints cannot fit it: 3 endpoints in use and "
        "it asks for 1 endpoint more; delete an endpoint of acme or ask an admin to raise the quota")})

    # an update that asks more is checked, one that asks nothing new is not
    status, body = await call(api, "PUT", "/v2/endpoint/acme/e1", json={"compute": {"scaling": {"minReplica": 2}}})
    assert status == 409 and body["error"].startswith(
        "endpoint acme/e1 is not changed: namespace acme's quota of 2 CPUs cannot fit it: 1 CPU in use and it asks "
        "for 2 CPUs more")
    assert (await call(api, "PUT", "/v2/endpoint/acme/e1", json={"tags": ["busy"]}))[0] == 200
    assert (await call(api, "PUT", "/v2/endpoint/acme/e1",
                       json={"compute": {"scaling": {"minReplica": 1, "maxReplica": 3}}}))[0] == 200
    # a paused endpoint keeps nothing: e1 may then keep two
    assert (await call(api, "POST", "/v2/endpoint/acme/e2/pause"))[0] == 200
    assert (await call(api, "PUT", "/v2/endpoint/acme/e1", json={"compute": {"scaling": {"minReplica": 2}}}))[0] == 200
    await settle(api)
    status, body = await call(api, "GET", "/v2/quotas/acme")
    assert body["use"] == {"gpus": 0, "cpus": 2, "memory": 0, "replicas": 2, "endpoints": 3}

    for name in ("b1", "b2", "b3", "b4"):  # bob's namespace has no quota
        assert (await call(api, "POST", "/v2/endpoint/bob", "bob", json=endpoint(api, name)))[0] == 200
    await settle(api)
    assert all(api.world.ready_ids(key) for key in api.world.controller.keys() if key.namespace == "bob")
    assert (await call(api, "GET", "/v2/quotas/bob", "bob"))[1]["use"]["replicas"] == 4


async def test_a_raised_quota_starts_what_waited(api):
    await call(api, "PUT", "/v2/quotas/acme", "admin", json={"replicas": 1})
    for name in ("e1", "e2"):
        assert (await call(api, "POST", "/v2/endpoint/acme", json=endpoint(api, name, 0, 1)))[0] == 200
    await settle(api)
    states = sorted([(await call(api, "GET", f"/v2/endpoint/acme/{n}"))[1]["status"]["state"] for n in ("e1", "e2")])
    assert states == ["pending", "running"]
    await call(api, "PUT", "/v2/quotas/acme", "admin", json={"replicas": 2})
    await settle(api)
    for name in ("e1", "e2"):
        assert (await call(api, "GET", f"/v2/endpoint/acme/{name}"))[1]["status"]["state"] == "running"
