"""The read routes that show what happened — replica timelines, events, the audit log — in
process on a real store, through real HTTP."""

from __future__ import annotations

import pytest

from tests.api_harness import ApiWorld


@pytest.fixture
async def api(tmp_path):
    w = await ApiWorld().start(tmp_path)
    yield w
    await w.close()


async def call(api, method, path, who="alice", **kw):
    r = await api.client.request(method, path, headers={**api.auth(who), **kw.pop("headers", {})}, **kw)
    return r.status, await r.json()


async def test_a_replica_timeline_from_pending_to_running_then_stopped(api):
    assert (await call(api, "POST", "/v2/endpoint/alice", json=api.body()))[0] == 200
    await api.world.settle()
    status, body = await call(api, "GET", "/v2/endpoint/alice/e1/replica")
    assert status == 200
    (replica,) = body["items"]
    assert replica["state"] == "running" and replica["revision"] == 1 and replica["readyAt"]
    assert [t["state"] for t in replica["timeline"]] == ["pending", "initializing", "running"]
    await call(api, "POST", "/v2/endpoint/alice/e1/scale-to-zero")
    await api.world.settle()
    (replica,) = (await call(api, "GET", "/v2/endpoint/alice/e1/replica"))[1]["items"]
    assert replica["state"] == "stopped" and replica["stoppedAt"]
    assert [t["state"] for t in replica["timeline"]][-2:] == ["draining", "stopped"]


async def test_events_say_why(api):
    await call(api, "POST", "/v2/endpoint/alice", json=api.body())
    await api.world.settle()
    status, body = await call(api, "GET", "/v2/endpoint/alice/e1/events")
    kinds = [e["kind"] for e in body["items"]]
    assert status == 200 and kinds[:2] == ["replica_starting", "replica_ready"]
    last = body["last"]
    await call(api, "POST", "/v2/endpoint/alice/e1/scale-to-zero")
    await api.world.settle()
    newer = (await call(api, "GET", f"/v2/endpoint/alice/e1/events?since={last}"))[1]["items"]
    assert [e["kind"] for e in newer][:2] == ["scaled_to_zero", "replica_draining"]
    assert (await call(api, "GET", "/v2/endpoint/alice/e1/events?limit=0"))[0] == 400


async def test_the_audit_log_lists_actions_with_who_and_the_request_id(api):
    await call(api, "POST", "/v2/endpoint/alice", json=api.body(secrets={"K": "audit-secret-99"}),
               headers={"X-Request-Id": "req-create"})
    await call(api, "PUT", "/v2/endpoint/alice/e1", json={"tags": ["x"]}, headers={"X-Request-Id": "req-update"})
    await call(api, "POST", "/v2/endpoint/alice/e1/pause", headers={"X-Request-Id": "req-pause"})
    await call(api, "POST", "/v2/endpoint/alice/e1/resume", "admin", headers={"X-Request-Id": "req-resume"})
    status, body = await call(api, "GET", "/v2/audit/alice")
    assert status == 200 and body["nextCursor"] is None
    assert [(i["action"], i["user"], i["requestId"]) for i in body["items"]] == [
        ("resume", "admin", "req-resume"), ("pause", "alice", "req-pause"),
        ("update", "alice", "req-update"), ("create", "alice", "req-create"),
    ]
    assert body["items"][0]["endpoint"] == "e1" and body["items"][0]["sourceIp"] == "127.0.0.1"
    assert "audit-secret-99" not in str(body)
    only = (await call(api, "GET", "/v2/audit/alice?action=pause"))[1]["items"]
    assert [i["requestId"] for i in only] == ["req-pause"]
    page = (await call(api, "GET", "/v2/audit/alice?limit=3"))[1]
    assert len(page["items"]) == 3 and page["nextCursor"]
    rest = (await call(api, "GET", f"/v2/audit/alice?limit=3&cursor={page['nextCursor']}"))[1]
    assert [i["requestId"] for i in rest["items"]] == ["req-create"] and rest["nextCursor"] is None


@pytest.mark.parametrize("path", [
    "/v2/endpoint/alice/e1/replica", "/v2/endpoint/alice/e1/events", "/v2/audit/alice", "/v2/audit/*",
])
async def test_other_namespaces_get_403(api, path):
    await call(api, "POST", "/v2/endpoint/alice", json=api.body())
    status, body = await call(api, "GET", path, "bob")
    assert status == 403
    assert (await call(api, "GET", path, "admin"))[0] == 200
