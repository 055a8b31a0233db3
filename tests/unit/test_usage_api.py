"""`GET /v2/usage/{ns}` over real HTTP on a real store: who may read which namespace, the query's
parameters and their 400s, and the answer as its OpenAPI schema says (checked with the JSON
Schema validator schemathesis brings)."""

from __future__ import annotations

import jsonschema_rs
import pytest

from autoscaler.api.usage import OPENAPI_PATHS, SCHEMAS
from autoscaler.model.usage import Hardware, IntervalReplicas, IntervalTraffic, Rates
from autoscaler.observe.usage import UsageConfig, UsageMeter
from tests.api_harness import ApiWorld

NOW = 1_700_003_600.0
HOUR = NOW - 3600  # a multiple of the usage interval
L4 = Hardware("gpu", "nvidia-l4", "x1")
CPU = Hardware("cpu", "intel-icl", "x1")


class Idle:
    """Nothing held, nothing served: the answer is what the store has."""

    def holding(self):
        return []

    def traffic(self):
        return {}

    def engine_readings(self):
        return {}


@pytest.fixture
async def api(tmp_path):
    def meter(store):
        return UsageMeter(UsageConfig(), store, holders=Idle(), traffic=Idle(), hardware_of=lambda i: CPU,
                          rates=Rates({"nvidia-l4": 0.8}), wall=lambda: NOW)

    w = await ApiWorld().start(tmp_path, usage_meter=meter)
    await w.store.write_usage(
        [IntervalReplicas("acme", "chat", HOUR + 60 * i, L4, 60) for i in range(30)]
        + [IntervalReplicas("bob", "mine", HOUR, CPU, 30)],
        [IntervalTraffic("acme", "chat", HOUR + 60, 12, 1200, 34000, 900, 450),
         IntervalTraffic("bob", "mine", HOUR, 1, 10, 100, None, None)],
        [],
    )
    yield w
    await w.close()


async def get(api: ApiWorld, path: str, who: str | None, **query):
    headers = api.auth(who) if who else {}
    async with api.client.get(path, headers=headers, params=query) as r:
        return r.status, await r.json()


RESPONSE_SCHEMA = {**OPENAPI_PATHS["/v2/usage/{ns}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"],
                   "components": {"schemas": SCHEMAS}}


@pytest.mark.parametrize("who, ns, status", [
    ("alice", "acme", 200),  # a member of the org
    ("alice", "alice", 200),  # her own namespace (no usage: an empty answer)
    ("bob", "acme", 403),
    ("alice", "*", 403),  # every namespace: admins only
    ("admin", "*", 200),
    ("admin", "acme", 200),
    (None, "acme", 401),
])
async def test_who_may_read_a_namespaces_usage(api, who, ns, status):
    got, body = await get(api, f"/v2/usage/{ns}", who)
    assert got == status
    if status != 200:
        assert isinstance(body["error"], str) and body["error"]


async def test_the_answer_per_endpoint_and_bucket_matches_its_schema(api):
    status, body = await get(api, "/v2/usage/acme", "alice", **{"from": str(int(HOUR)), "to": "2023-11-14T23:13:20Z",
                                                                  "step": "900"})
    assert status == 200
    jsonschema_rs.validate(RESPONSE_SCHEMA, body)
    [chat] = body["endpoints"]
    assert [b["replicaSeconds"] for b in chat["buckets"]] == [900, 900]  # 30 minutes of one L4 in two buckets
    assert chat["buckets"][0]["from"] == "2023-11-14T22:13:20.000Z" and body["buckets"] == 4
    assert chat["total"]["cost"] == pytest.approx(0.4) and body["total"]["cost"] == pytest.approx(0.4)
    assert (chat["total"]["requests"], chat["total"]["tokensIn"], chat["total"]["tokensOut"]) == (12, 900, 450)
    assert body["unpriced"] == []


async def test_an_admin_reads_every_namespace_with_star(api):
    status, body = await get(api, "/v2/usage/*", "admin", **{"from": str(int(HOUR))})
    assert status == 200
    jsonschema_rs.validate(RESPONSE_SCHEMA, body)
    assert [(e["namespace"], e["name"]) for e in body["endpoints"]] == [("acme", "chat"), ("bob", "mine")]
    assert body["total"]["replicaSeconds"] == 1830 and body["unpriced"] == ["intel-icl"]
    assert body["endpoints"][1]["total"]["tokensIn"] is None  # its engine counts no tokens


@pytest.mark.parametrize("query, message", [
    ({"from": "yesterday"}, "`from` = 'yesterday' is not a time"),
    ({"to": "2023-11-14T23:13:20"}, "has no time zone"),
    ({"from": str(NOW), "to": str(NOW - 1)}, "must be later than `from`"),
    ({"step": "soon"}, "`step` = 'soon' is not a number of seconds"),
    ({"step": "0"}, "`step` must be between 1 and"),
    ({"step": "nan"}, "`step` must be between 1 and"),
    ({"step": "1", "from": str(NOW - 86_400)}, "more than 1000: use a step of at least 87 s"),
])
async def test_a_bad_query_is_a_400_saying_what_to_change(api, query, message):
    status, body = await get(api, "/v2/usage/acme", "alice", **query)
    assert status == 400 and message in body["error"]
