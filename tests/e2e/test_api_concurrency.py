"""Concurrent updates of one endpoint, in process on a real store, through real HTTP: the README
promises that each is re-applied to a fresh read, so none is refused and none is lost."""

from __future__ import annotations

import asyncio

import pytest

from autoscaler.control.keyed_locks import KeyedLocks
from tests.api_harness import ApiWorld

PUTS = 200


@pytest.fixture
async def api(tmp_path):
    w = await ApiWorld().start(tmp_path)
    yield w
    await w.close()


def change(i: int) -> tuple[str, dict, object]:
    """The i-th PUT: a scaling-only change of one of three fields, and the value it sets."""
    if i % 3 == 0:
        return "tags", {"tags": [f"t{i}"]}, [f"t{i}"]
    if i % 3 == 1:
        return "timeout", {"compute": {"scaling": {"scaleToZeroTimeout": 100 + i}}}, 100 + i
    return "threshold", {"compute": {"scaling": {"measure": {"pendingRequests": float(i + 1)}}}}, float(i + 1)


def read(body: dict, field: str) -> object:
    scaling = body["compute"]["scaling"]
    return {"tags": body["tags"], "timeout": scaling["scaleToZeroTimeout"],
            "threshold": scaling["measure"]["pendingRequests"]}[field]


async def test_200_concurrent_puts_are_all_applied(api):
    body = api.body()
    body["compute"]["scaling"] = {"minReplica": 0, "maxReplica": 1, "scaleToZeroTimeout": 15}
    r = await api.client.post("/v2/endpoint/alice", json=body, headers=api.auth("alice"))
    assert r.status == 200
    before = await api.store.get_endpoint("alice", "e1")

    async def put(i: int):
        field, body, value = change(i)
        r = await api.client.put("/v2/endpoint/alice/e1", json=body, headers=api.auth("alice"))
        return i, field, value, r.status, await r.json()

    answers = await asyncio.gather(*(put(i) for i in range(PUTS)))
    refused = [(i, status, body) for i, _, _, status, body in answers if status != 200]
    assert not refused, f"{len(refused)} of {PUTS} PUTs refused, e.g. {refused[0]}"
    for i, field, value, _, body in answers:  # each answer shows the endpoint with its own change
        assert read(body, field) == value, i

    after = await api.store.get_endpoint("alice", "e1")
    assert after.generation == before.generation + PUTS  # every PUT was one write
    final = (await (await api.client.get("/v2/endpoint/alice/e1", headers=api.auth("alice"))).json())
    for field in ("tags", "timeout", "threshold"):  # no write reverted another field to what it read
        sent = [value for _, f, value, _, _ in answers if f == field]
        assert read(final, field) in sent, field
    audit = await api.store.list_audit("alice", limit=PUTS + 10, action="update")
    assert len(audit) == PUTS


async def test_keyed_locks_take_turns_per_key_and_forget_idle_keys():
    locks, inside, most = KeyedLocks(), {"a": 0, "b": 0}, {"a": 0, "b": 0}

    async def work(key: str):
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await asyncio.sleep(0)
            inside[key] -= 1

    waiter = asyncio.ensure_future(work("a"))
    await asyncio.gather(*(work(k) for k in "ab" * 50), waiter)
    assert most == {"a": 1, "b": 1} and len(locks) == 0

    async with locks.hold("a"):
        cancelled = asyncio.ensure_future(work("a"))
        await asyncio.sleep(0)
        assert len(locks) == 1
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
    assert len(locks) == 0
