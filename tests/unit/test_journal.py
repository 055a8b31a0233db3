"""Events and replica timelines kept in the store (the journal), on a real SQLite file: their
bounds, and a cursor that keeps increasing across restarts whatever the order of events."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from autoscaler.control.journal import Journal
from autoscaler.model import events as events_mod
from autoscaler.model.events import Event
from autoscaler.model.timelines import (
    KEEP_STOPPED_S,
    MAX_STOPPED,
    MAX_TIMELINE,
    ReplicaHistory,
    ReplicaRecord,
    ReplicaState,
    from_json,
    to_json,
)
from autoscaler.store.store import Store
from tests.examples import examples

T0 = datetime(2026, 12, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def wall(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path, clock):
    s = await Store.open(tmp_path / "endpointd.db", now=clock)
    yield s
    await s.close()


def event(uid: str, at: float, kind: str = "k") -> Event:
    return Event(0, at, uid, kind, "why", None, {"n": 1})


def stopped(replica_id: str, at: float) -> dict:
    record = ReplicaRecord(replica_id, 1, at - 60, state=ReplicaState.STOPPED, stopped_at=at,
                           timeline=[(ReplicaState.PENDING, at - 60), (ReplicaState.STOPPED, at)])
    return to_json(record)


# --- the store's bounds ----------------------------------------------------------------------------


async def test_events_are_kept_per_endpoint_up_to_the_bound(store, clock):
    now = clock.wall()
    extra = 5
    await store.write_journal([event("a", now, f"k{i}") for i in range(events_mod.PER_ENDPOINT + extra)], [], [])
    await store.write_journal([event("b", now)], [], [])
    kept = await store.list_events("a", 0, 10 * events_mod.PER_ENDPOINT)
    assert len(kept) == events_mod.PER_ENDPOINT and kept[0].kind == f"k{extra}"  # the oldest went first
    assert [e.kind for e in await store.list_events("b", 0, 10)] == ["k"]


async def test_events_older_than_keep_s_go(store, clock):
    now = clock.wall()
    await store.write_journal([event("a", now - events_mod.KEEP_S - 1, "old"), event("a", now, "new")], [], [])
    assert [e.kind for e in await store.list_events("a", 0, 10)] == ["new"]
    clock.now += timedelta(seconds=events_mod.KEEP_S + 1)  # "new" ages out at the next write
    await store.write_journal([event("a", clock.wall(), "newer")], [], [])
    assert [e.kind for e in await store.list_events("a", 0, 10)] == ["newer"]


async def test_stopped_replicas_are_kept_up_to_the_bound_and_for_keep_stopped_s(store, clock):
    now = clock.wall()
    live = to_json(ReplicaRecord("live", 1, now - 10 * KEEP_STOPPED_S))  # never pruned while live
    old = stopped("old", now - KEEP_STOPPED_S - 1)
    many = [stopped(f"r{i}", now - 1000 + i) for i in range(MAX_STOPPED + 3)]
    await store.write_journal([], [("u", r) for r in [live, old, *many]], [])
    await store.create_endpoint("ns", "e", {}, state="running")
    uid = (await store.get_endpoint("ns", "e")).uid
    await store.write_journal([], [(uid, live)], [])
    kept = await store.load_replicas()
    assert list(kept) == [uid]  # "u" belongs to no endpoint: gone at load
    await store.write_journal([], [("u", r) for r in [live, old, *many]], [])
    rows = (await store._all("SELECT id FROM replicas WHERE uid = 'u'"))  # noqa: SLF001 - what is stored
    ids = {row["id"] for row in rows}
    assert ids == {"live"} | {f"r{i}" for i in range(3, MAX_STOPPED + 3)}


async def test_the_cursor_never_goes_back(tmp_path, clock):
    s = await Store.open(tmp_path / "endpointd.db", now=clock)
    await s.write_journal([event("a", clock.wall()) for _ in range(3)], [], [])
    last = (await s.list_events("a"))[-1].seq
    await s.write_journal([], [], ["a"])  # forgotten: every row of it goes
    assert await s.list_events("a") == []
    await s.close()
    s = await Store.open(tmp_path / "endpointd.db", now=clock)
    await s.write_journal([event("a", clock.wall())], [], [])
    assert [e.seq for e in await s.list_events("a")] == [last + 1]
    await s.close()


# --- replica histories -----------------------------------------------------------------------------


def test_an_adopted_replica_keeps_its_timeline_and_the_rest_is_stopped(clock):
    changes = []
    h = ReplicaHistory(clock.wall, on_change=lambda r: changes.append(r.id))
    h.started("r1", 1)
    h.moved("r1", ReplicaState.RUNNING)
    h.started("r2", 1)
    h.moved("r2", ReplicaState.RUNNING)
    kept = [from_json(to_json(r)) for r in h.items()]
    assert [to_json(r) for r in kept] == [to_json(r) for r in h.items()]
    assert changes == ["r1", "r1", "r2", "r2"]

    clock.now += timedelta(seconds=5)  # a restart: r1 is adopted, r2 was not
    after = ReplicaHistory(clock.wall, kept)
    after.started("r1", 1, running=True)
    after.settle(["r1"])
    r1, r2 = after.items()
    assert [s for s, _ in r1.timeline] == ["pending", "running"] and r1.state is ReplicaState.RUNNING
    assert "restarted" in r1.message
    assert r2.state is ReplicaState.STOPPED and r2.stopped_at == clock.wall() and "did not keep it" in r2.message


def test_a_timeline_keeps_its_first_entry_and_the_latest(clock):
    h = ReplicaHistory(clock.wall)
    h.started("r", 1)
    for _ in range(MAX_TIMELINE):
        h.moved("r", ReplicaState.RUNNING)
        h.moved("r", ReplicaState.DRAINING)
    (r,) = h.items()
    assert len(r.timeline) == MAX_TIMELINE and r.timeline[0][0] is ReplicaState.PENDING
    assert r.timeline[-1][0] is ReplicaState.DRAINING


# --- the journal ------------------------------------------------------------------------------------


async def test_the_journal_keeps_events_and_histories_across_a_restart(tmp_path, clock):
    s = await Store.open(tmp_path / "endpointd.db", now=clock)
    rec = await s.create_endpoint("ns", "e", {}, state="running")
    j = Journal(s, clock.wall)
    await j.load()
    h = j.history(rec.uid)
    h.started("r1", 1)
    j.events.record(rec.uid, "replica_starting", "a reason", replica="r1", gpus=[])
    seen = await j.events.read(rec.uid)
    assert [(e.kind, e.replica) for e in seen] == [("replica_starting", "r1")]
    with pytest.raises(TypeError, match="await read"):
        j.events.list(rec.uid)
    h.moved("r1", ReplicaState.RUNNING)
    await j.flush()
    await s.close()

    s = await Store.open(tmp_path / "endpointd.db", now=clock)
    j = Journal(s, clock.wall)
    await j.load()
    (r1,) = j.history(rec.uid).items()
    assert r1.state is ReplicaState.RUNNING and [st for st, _ in r1.timeline] == ["pending", "running"]
    j.events.record(rec.uid, "replica_adopted", "found")
    newer = await j.events.read(rec.uid, since=seen[-1].seq)
    assert [e.kind for e in newer] == ["replica_adopted"] and newer[0].seq > seen[-1].seq
    j.events.forget(rec.uid)
    assert await j.events.read(rec.uid) == []
    await s.close()


# --- whatever the order: restarts, crashes, deletions, time -------------------------------------------

BOUND = 7


class JournalMachine(RuleBasedStateMachine):
    """A reader follows each endpoint's events with `since`; endpointd records, restarts (its
    queue written), crashes (its queue lost), forgets endpoints, and time passes. The reader never
    sees an id twice or out of order, sees every event written since its cursor (the latest
    BOUND), and the store never keeps more than BOUND per endpoint or any older than KEEP_S."""

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "endpointd.db"
        self.clock = Clock()
        self.saved = (events_mod.PER_ENDPOINT,)
        events_mod.PER_ENDPOINT = BOUND
        self.cursor = {"a": 0, "b": 0}
        self.unseen: dict[str, list[str]] = {"a": [], "b": []}  # written, not yet read, oldest first
        self.queued: dict[str, list[str]] = {"a": [], "b": []}  # recorded, not yet written
        self.n = 0
        self.open()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def open(self):
        self.store = self.run(Store.open(self.path, now=self.clock))
        self.journal = Journal(self.store, self.clock.wall)

    def teardown(self):
        events_mod.PER_ENDPOINT = self.saved[0]
        self.run(self.store.close())
        self.loop.close()
        self.dir.cleanup()

    def written(self):
        for uid, kinds in self.queued.items():
            self.unseen[uid] = (self.unseen[uid] + kinds)[-BOUND:]
            kinds.clear()

    @rule(uid=st.sampled_from(["a", "b"]), count=st.integers(1, 10))
    def record(self, uid, count):
        for _ in range(count):
            self.n += 1
            self.journal.events.record(uid, f"k{self.n}", "why")
            self.queued[uid].append(f"k{self.n}")

    @rule(uid=st.sampled_from(["a", "b"]))
    def read(self, uid):
        found = self.run(self.journal.events.read(uid, since=self.cursor[uid], limit=1000))
        self.written()
        ids = [e.seq for e in found]
        assert ids == sorted(set(ids))
        # An id handed out again (at or below the cursor) would be missed here.
        assert [e.kind for e in found] == self.unseen[uid]
        self.unseen[uid] = []
        if found:
            self.cursor[uid] = found[-1].seq

    @rule()
    def restart(self):
        self.run(self.journal.flush())
        self.written()
        self.run(self.store.close())
        self.open()

    @rule()
    def crash(self):
        self.queued = {"a": [], "b": []}  # recorded since the last write: lost with the process
        self.run(self.store.close())
        self.open()

    @rule(uid=st.sampled_from(["a", "b"]))
    def forget(self, uid):
        self.journal.events.forget(uid)
        self.run(self.journal.flush())
        self.written()
        self.unseen[uid] = []

    @rule()
    def a_month_passes(self):
        self.run(self.journal.flush())
        self.written()
        self.clock.now += timedelta(seconds=events_mod.KEEP_S + 1)
        self.unseen = {"a": [], "b": []}  # everything written so far ages out at the next write
        self.record("a", 1)
        self.run(self.journal.flush())
        self.written()

    @invariant()
    def bounded(self):
        rows = self.run(self.store._all("SELECT uid, count(*) AS n, min(at) AS oldest FROM events GROUP BY uid"))  # noqa: SLF001
        for row in rows:
            assert row["n"] <= BOUND and row["oldest"] >= self.clock.wall() - events_mod.KEEP_S


JournalMachine.TestCase.settings = settings(
    max_examples=examples(60), stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestJournalMachine = JournalMachine.TestCase
