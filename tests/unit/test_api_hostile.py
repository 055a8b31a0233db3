"""The management API against hostile input, in process on a real store: each escape of the
tenant-isolation issue is tried and refused with a clear 4xx, and nothing is lost or leaked."""

from __future__ import annotations

import json

import pytest

from engines.artifacts import RepoFacts
from tests.api_harness import ApiWorld


@pytest.fixture
async def api(tmp_path):
    w = await ApiWorld().start(tmp_path)
    yield w
    await w.close()


async def create(api, who="alice", ns=None, body=None, raw=None):
    data = raw if raw is not None else json.dumps(body if body is not None else api.body())
    r = await api.client.post(f"/v2/endpoint/{ns or who}", data=data, headers=api.auth(who))
    return r.status, await r.json()


# --- who is asking comes first ------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("GET", "/v2/endpoint/alice/nope"),  # a missing endpoint...
    ("GET", "/v2/endpoint/alice"),
    ("DELETE", "/v2/endpoint/alice/e1"),
    ("POST", "/v2/endpoint/alice/nope/resume"),
    ("GET", "/v2/no-such-route"),  # ...or route: 401 all the same, before any lookup
    ("GET", "/api/whoami-v2"),
])
async def test_no_token_is_401_before_any_lookup(api, method, path):
    await create(api)
    r = await api.client.request(method, path)
    assert r.status == 401 and "needs a token" in (await r.json())["error"]
    r = await api.client.request(method, path, headers={"Authorization": "Bearer wrong"})
    assert r.status == 401


async def test_with_a_token_unknown_things_are_404(api):
    r = await api.client.get("/v2/no-such-route", headers=api.auth("alice"))
    assert r.status == 404
    r = await api.client.get("/v2/endpoint/alice/nope", headers=api.auth("alice"))
    assert r.status == 404


async def test_the_openapi_document_needs_no_token(api):
    assert (await api.client.get("/v2/openapi.json")).status == 200


# --- bodies and paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ("[" * 100_000 + "]" * 100_000, "nests deeper than 32 levels"),  # once a RecursionError: 500
    ('{"a":' * 40 + "1" + "}" * 40, "nests deeper than 32 levels"),
    ("{not json", "is not valid JSON"),
    ('{"name": "e1", "x": ' + "9" * 5000 + "}", "is not valid JSON"),  # beyond Python's int-string limit
])
async def test_malformed_bodies_are_400(api, raw, message):
    status, body = await create(api, raw=raw)
    assert status == 400 and message in body["error"]


@pytest.mark.parametrize("scaling, message", [
    ({"minReplica": 10**30, "maxReplica": 10**30}, "maxReplica must be an integer between 1 and 1000"),
    ({"minReplica": 1, "maxReplica": 33}, "maxReplica must be at most 32 on this host (the operator's max_replicas_per_endpoint); got 33"),
    ({"minReplica": 1, "maxReplica": 2, "measure": {"pendingRequests": float("nan")}}, "must be a number greater than 0"),
    ({"minReplica": 1, "maxReplica": 2, "measure": {"pendingRequests": float("inf")}}, "must be a number greater than 0"),
])
async def test_numbers_are_bounded(api, scaling, message):
    body = api.body()
    body["compute"]["scaling"] = scaling
    status, answer = await create(api, body=body)
    assert status == 400 and message in answer["error"]
    r = await api.client.post("/v2/endpoint/alice/e1/resume", headers=api.auth("alice"))
    assert r.status == 404  # nothing was created: resume finds nothing, and is no 500


@pytest.mark.parametrize("name", ["%01%0a", "%0d%0aX-Injected:%201", "%e2%80%ae", "%ff"])
async def test_control_characters_in_a_path_never_reach_a_header(api, name):
    r = await api.client.get(f"/v2/endpoint/alice/{name}", headers=api.auth("alice"))
    assert r.status == 404 and "does not exist" in (await r.json())["error"]
    header = r.headers["X-Error-Message"]
    assert header.isascii() and header.isprintable() and "X-Injected" not in r.headers


# --- what a repository may name -----------------------------------------------------------------


@pytest.mark.parametrize("repository", [
    "{data}", "{data}/endpointd.db", "/var/run", "/var/run/docker.sock", "/", "/etc", "{models}/../data",
    "../../../../etc", "~",
])
async def test_host_paths_outside_the_model_roots_are_refused(api, repository):
    repository = repository.format(data=api.data, models=api.models)
    status, body = await create(api, body=api.body(repository=repository))
    assert status == 400
    assert str(api.models.resolve()) in body["error"]  # names the allowed roots
    assert "model_roots" in body["error"]


async def test_a_symlink_out_of_a_root_is_refused(api):
    (api.models / "escape").symlink_to(api.data)
    status, body = await create(api, body=api.body(repository=str(api.models / "escape")))
    assert status == 400 and "not under a model root" in body["error"]


async def test_a_repository_under_a_root_and_a_hub_id_are_accepted(api):
    assert (await create(api))[0] == 200

    async def hub(repository, revision, namespace):  # the Hub, as far as pinning asks it (no network here)
        return RepoFacts(repository, "c" * 40, {"config.json": 2})

    api.api.describe = hub
    assert (await create(api, body=api.body("e2", repository="acme/some-model")))[0] == 200


# --- route domains ------------------------------------------------------------------------------


def with_domain(api, name, domain):
    body = api.body(name)
    body["route"] = {"domain": domain}
    return body


@pytest.mark.parametrize("domain, message", [
    ("127.0.0.1", "must be a DNS host name"),
    ("[::1]", "must be a DNS host name"),
    ("2130706433", "must be a DNS host name"),
    ("0x7f000001", "must be a DNS host name"),
    ("localhost", "is one of this server's own names"),
    ("LOCALHOST", "is one of this server's own names"),
    ("endpointd.example.org", "is one of this server's own names"),
    ("a" * 64 + ".example.com", "must be a DNS host name"),
    ("under_score.example.com", "must be a DNS host name"),
    ("", "must be a DNS host name"),
])
async def test_a_domain_must_be_a_host_name_and_not_the_servers(api, domain, message):
    status, body = await create(api, body=with_domain(api, "e1", domain))
    assert status == 400 and message in body["error"]


async def test_a_domain_is_unique_and_freed_by_delete(api):
    assert (await create(api, body=with_domain(api, "e1", "E1.Models.Example.com")))[0] == 200
    status, body = await create(api, "bob", body=with_domain(api, "b1", "e1.models.example.com"))
    assert status == 409 and body["error"] == (
        "route.domain e1.models.example.com is already taken by an endpoint of another namespace; choose another")
    status, body = await create(api, "admin", ns="bob", body=with_domain(api, "b1", "e1.models.example.com"))
    assert status == 409 and "taken by endpoint alice/e1" in body["error"]  # an admin may know who
    r = await api.client.put("/v2/endpoint/alice/e2", json={}, headers=api.auth("alice"))
    assert r.status == 404
    assert (await create(api, body=api.body("e2")))[0] == 200
    r = await api.client.put("/v2/endpoint/alice/e2", json={"route": {"domain": "e1.models.example.com"}},
                             headers=api.auth("alice"))
    assert r.status == 409 and "taken by endpoint alice/e1" in (await r.json())["error"]
    r = await api.client.delete("/v2/endpoint/alice/e1", headers=api.auth("alice"))
    assert r.status == 200
    assert (await create(api, "bob", body=with_domain(api, "b1", "e1.models.example.com")))[0] == 200


# --- secrets ------------------------------------------------------------------------------------


async def test_secrets_are_sealed_at_rest_and_never_returned_or_audited(api):
    body = api.body(secrets={"HF_TOKEN": "hf_secret_value_123"})
    body["model"]["image"]["custom"]["credentials"] = {"username": "u", "password": "registry_pw_456"}
    status, answer = await create(api, body=body)
    assert status == 200
    text = json.dumps(answer)
    assert "hf_secret_value_123" not in text and "registry_pw_456" not in text
    for path in api.data.iterdir():
        raw = path.read_bytes()
        assert b"hf_secret_value_123" not in raw and b"registry_pw_456" not in raw, path.name
    audit = await api.store.list_audit("alice")
    assert "hf_secret_value_123" not in json.dumps([a.details for a in audit])
    intent = api.world.controller.intent(__import__("engines.runtime", fromlist=["EndpointKey"]).EndpointKey("alice", "e1"))
    assert intent.spec.model.secrets == {"HF_TOKEN": "hf_secret_value_123"}  # the launcher gets the value
