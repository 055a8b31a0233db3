"""The SQLite store: opening and migrating, users and orgs, endpoints, the audit log, rate limits, two
stores on one file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest

from autoscaler.model.quotas import Quota
from autoscaler.store import store as store_mod
from autoscaler.store.store import (
    MIGRATIONS,
    AuditEntry,
    Conflict,
    EndpointRecord,
    NotFound,
    Stale,
    Store,
    StoreError,
    UserInfo,
)
from proxy.core.limits import Override

T0 = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
SPEC = {"model": {"repository": "acme/tiny", "image": {"custom": {"url": "echo:1", "port": 8000}}}, "type": "private"}


class Clock:
    def __init__(self) -> None:
        self.moment = T0

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "endpointd.db"


@pytest.fixture
async def store(db_path, clock):
    opened = await Store.open(db_path, now=clock)
    yield opened
    await opened.close()


def raw(path) -> sqlite3.Connection:
    """A connection of another process's kind: no busy timeout, autocommit unless told."""
    return sqlite3.connect(path, isolation_level=None, timeout=0)


def opened(path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(raw(path))


def schema(path) -> list[tuple[str, str]]:
    with opened(path) as db:
        return db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()


def user_version(path) -> int:
    with opened(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


# --- opening and migrating ---------------------------------------------------------------------


async def test_open_creates_the_directory_and_the_file_at_the_latest_schema(store, db_path):
    assert db_path.is_file()
    assert user_version(db_path) == len(MIGRATIONS) == 8
    with opened(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent: every later connection


@pytest.mark.parametrize(("pragma", "value"), [
    ("busy_timeout", store_mod.BUSY_TIMEOUT_MS),  # a writer waits for another process
    ("foreign_keys", 1),  # off by default in SQLite, per connection
    ("journal_mode", "wal"),
])
async def test_the_connection_is_set_up(store, pragma, value):
    assert tuple(await store._one(f"PRAGMA {pragma}")) == (value,)


async def test_a_v1_database_is_migrated_forward_and_reopening_is_a_no_op(db_path, clock):
    db_path.parent.mkdir()
    with opened(db_path) as db:
        db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
        db.execute("INSERT INTO users (name, created_at) VALUES ('alice', '2024-01-01T00:00:00.000Z')")
        db.execute(
            "INSERT INTO tokens (id, user, label, hash, created_at) VALUES ('t1', 'alice', 'old', ?, '2024-01-01T00:00:00.000Z')",
            (store_mod.tokens.hash_token("epd_made-by-v1"),),
        )

    store = await Store.open(db_path, now=clock)
    try:
        assert user_version(db_path) == len(MIGRATIONS)
        identity = await store.verify_token("epd_made-by-v1")
        assert (identity.user, identity.is_admin) == ("alice", False)
        [info] = await store.list_tokens("alice")
        assert (info.id, info.label, info.hint) == ("t1", "old", "")  # no hint for a token made before v2
    finally:
        await store.close()
    migrated = schema(db_path)

    # Up to date, opening takes no write lock: it opens at once while another process holds it.
    holder = raw(db_path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        store = await Store.open(db_path, now=clock)
        await store.close()
        assert time.monotonic() - started < 1
    finally:
        holder.rollback()
        holder.close()
    assert (schema(db_path), user_version(db_path)) == (migrated, len(MIGRATIONS))


async def test_stores_opening_a_new_file_at_the_same_moment_migrate_it_once(db_path):
    results = await asyncio.gather(*(Store.open(db_path) for _ in range(4)), return_exceptions=True)
    for result in results:
        if isinstance(result, Store):
            await result.close()
    assert [type(r) for r in results] == [Store] * 4
    assert user_version(db_path) == len(MIGRATIONS)


async def test_a_failed_migration_changes_nothing(db_path, monkeypatch):
    await (await Store.open(db_path)).close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE extra (x); INSERT INTO missing VALUES (1);"])
    with pytest.raises(sqlite3.OperationalError, match="no such table: missing"):
        await Store.open(db_path)
    assert user_version(db_path) == len(MIGRATIONS)
    assert "extra" not in {name for name, _ in schema(db_path)}


async def test_a_semicolon_inside_a_statement_does_not_end_it(db_path, monkeypatch):
    script = """
        CREATE TABLE notes (t TEXT);
        CREATE TRIGGER copy AFTER INSERT ON notes BEGIN INSERT INTO notes_log VALUES ('saw; ' || NEW.t); END;
        CREATE TABLE notes_log (t TEXT);
        INSERT INTO notes VALUES ('a; b');
    """
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, script])
    await (await Store.open(db_path)).close()
    with opened(db_path) as db:
        assert db.execute("SELECT t FROM notes_log").fetchall() == [("saw; a; b",)]


async def test_a_database_from_a_newer_endpointd_is_refused(db_path):
    db_path.parent.mkdir()
    with opened(db_path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match=f"schema version 99, newer than this endpointd knows \\({len(MIGRATIONS)}\\); upgrade endpointd"):
        await Store.open(db_path)


# --- users and orgs ----------------------------------------------------------------------------


async def test_add_user_creates_missing_orgs_and_later_adds_memberships(store, clock):
    assert await store.add_user("alice", ["acme"]) == UserInfo("alice", frozenset({"acme"}), False, T0)
    clock.advance(60)
    assert await store.add_user("alice", ("acme", "beta")) == UserInfo("alice", frozenset({"acme", "beta"}), False, T0)
    assert await store.add_user("bob", ["beta"]) == UserInfo("bob", frozenset({"beta"}), False, T0 + timedelta(seconds=60))
    assert await store.get_user("alice") == UserInfo("alice", frozenset({"acme", "beta"}), False, T0)
    assert await store.user_orgs("bob") == frozenset({"beta"})
    assert await store.user_orgs("nobody") == frozenset()


async def test_admin_is_only_ever_granted_by_add_user(store):
    await store.add_user("root", is_admin=True)
    assert (await store.add_user("root", ["ops"])).is_admin


async def test_get_user_of_an_unknown_name(store):
    with pytest.raises(NotFound, match="^user ghost does not exist; add it with `endpointd users add ghost`$"):
        await store.get_user("ghost")


@pytest.mark.parametrize(("name", "kind"), [("alice", "user"), ("acme", "org"), ("nobody", None)])
async def test_namespace_kind(store, name, kind):
    await store.add_user("alice", ["acme"])
    assert await store.namespace_kind(name) == kind


@pytest.mark.parametrize(("name", "orgs", "message"), [
    ("acme", [], "acme is an org; users and orgs share one namespace, so choose another user name"),
    ("carol", ["bob"], "bob is a user name, so it cannot also be an org; choose another org name"),
    ("carol", ["carol"], "carol is a user name, so it cannot also be an org; choose another org name"),
    ("carol", ["new-org", "bob"], "bob is a user name"),  # and new-org is not created either
])
async def test_users_and_orgs_share_one_namespace(store, name, orgs, message):
    await store.add_user("bob", ["acme"])
    with pytest.raises(Conflict, match=message):
        await store.add_user(name, orgs)
    assert [await store.namespace_kind(n) for n in ("carol", "new-org")] == [None, None]
    assert await store.get_user("bob") == UserInfo("bob", frozenset({"acme"}), False, T0)


@pytest.mark.parametrize(("user", "namespace", "member"), [
    ("alice", "alice", True),  # one's own namespace
    ("alice", "acme", True),  # an org one belongs to
    ("alice", "other", False),  # an org of someone else
    ("alice", "bob", False),  # another user
    ("bob", "acme", False),
])
async def test_is_member(store, user, namespace, member):
    await store.add_user("alice", ["acme"])
    await store.add_user("bob", ["other"])
    assert await store.is_member(user, namespace) is member


# --- endpoints ---------------------------------------------------------------------------------


async def test_create_endpoint_returns_the_stored_record(store):
    record = await store.create_endpoint("acme", "e1", SPEC)
    assert record == EndpointRecord(
        "acme", "e1", SPEC, "pending", "", 1, False, T0, T0, None, record.uid, 1, None, None, None
    )
    assert len(record.uid) == 16
    assert await store.get_endpoint("acme", "e1") == record


async def test_a_re_created_endpoint_is_another_incarnation(store):
    first = await store.create_endpoint("acme", "e1", SPEC)
    await store.delete_endpoint("acme", "e1")
    second = await store.create_endpoint("acme", "e1", SPEC)
    assert first.uid != second.uid
    await store.save_status(first.uid, "failed", "from the deleted one's owner")  # lands nowhere
    assert (await store.get_endpoint("acme", "e1")).state == "pending"


async def test_an_endpoint_name_is_unique_within_its_namespace(store):
    await store.create_endpoint("acme", "e1", SPEC)
    with pytest.raises(Conflict, match="^endpoint acme/e1 already exists; choose another name or update it$"):
        await store.create_endpoint("acme", "e1", {"other": True})
    assert (await store.get_endpoint("acme", "e1")).spec == SPEC
    assert (await store.create_endpoint("alice", "e1", SPEC)).namespace == "alice"


async def test_list_endpoints_all_or_of_one_namespace(store):
    for namespace, name in [("beta", "b"), ("acme", "z"), ("acme", "a")]:
        await store.create_endpoint(namespace, name, SPEC)
    assert [(r.namespace, r.name) for r in await store.list_endpoints()] == [("acme", "a"), ("acme", "z"), ("beta", "b")]
    assert [r.name for r in await store.list_endpoints("acme")] == ["a", "z"]
    assert await store.list_endpoints("nobody") == []


NEW_SPEC = {**SPEC, "model": {"repository": "acme/bigger"}}


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, {}),  # only the generation and updated_at move
    ({"spec": NEW_SPEC}, {"spec": NEW_SPEC}),  # a scaling-only change keeps the revision
    ({"spec": NEW_SPEC, "bump_revision": True}, {"spec": NEW_SPEC, "revision": 2}),
    ({"paused": True}, {"paused": True}),
    ({"zeroed_at": 1234.5}, {"zeroed_at": 1234.5}),
])
async def test_update_intent_changes_only_what_is_given(store, clock, changes, expected):
    before = await store.create_endpoint("acme", "e1", SPEC, state="initializing")
    clock.advance(60)
    after = await store.update_intent("acme", "e1", before.generation, **changes)
    assert after == dataclasses.replace(before, **expected, generation=2, updated_at=T0 + timedelta(seconds=60))
    assert await store.get_endpoint("acme", "e1") == after


async def test_an_intent_write_from_a_stale_read_is_refused(store):
    rec = await store.create_endpoint("acme", "e1", SPEC)
    await store.update_intent("acme", "e1", rec.generation, paused=True)
    with pytest.raises(Stale, match="changed while this change was made; retry it"):
        await store.update_intent("acme", "e1", rec.generation, spec=NEW_SPEC)  # read before the pause
    assert (await store.get_endpoint("acme", "e1")).spec == SPEC


async def test_zeroed_at_can_be_cleared_and_kept(store):
    rec = await store.create_endpoint("acme", "e1", SPEC)
    rec = await store.update_intent("acme", "e1", rec.generation, zeroed_at=5.0)
    rec = await store.update_intent("acme", "e1", rec.generation, paused=True)  # "keep" by default
    assert rec.zeroed_at == 5.0
    rec = await store.update_intent("acme", "e1", rec.generation, zeroed_at=None)
    assert rec.zeroed_at is None


async def test_status_and_signals_are_the_owners_and_move_no_generation(store):
    rec = await store.create_endpoint("acme", "e1", SPEC)
    await store.save_status(rec.uid, "running", "1/1 replicas ready")
    await store.save_signals(rec.uid, woken_at=7.0, idle_at=3.0)
    after = await store.get_endpoint("acme", "e1")
    assert (after.state, after.message, after.woken_at, after.idle_at, after.generation) == (
        "running", "1/1 replicas ready", 7.0, 3.0, 1)


async def test_paused_can_be_cleared_and_revisions_keep_counting(store):
    rec = await store.create_endpoint("acme", "e1", SPEC)
    rec = await store.update_intent("acme", "e1", rec.generation, paused=True, bump_revision=True)
    record = await store.update_intent("acme", "e1", rec.generation, paused=False, bump_revision=True)
    assert (record.paused, record.revision, record.generation) == (False, 3, 3)


async def test_a_v2_endpoint_left_at_zero_stays_at_zero_after_the_migration(db_path, clock):
    db_path.parent.mkdir()
    with opened(db_path) as db:
        db.executescript(MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version = 2;")
        for name, target, paused in (("zero", 0, 0), ("one", 1, 0), ("paused", 0, 1)):
            db.execute(
                "INSERT INTO endpoints (namespace, name, spec, state, paused, target_replicas, created_at, updated_at) "
                "VALUES ('acme', ?, '{}', 'running', ?, ?, '2024-01-01T00:00:00.000Z', '2024-01-01T00:00:00.000Z')", (name, paused, target),
            )
    store = await Store.open(db_path, now=clock)
    try:
        records = {r.name: r for r in await store.list_endpoints()}
        assert records["zero"].zeroed_at is not None
        assert records["one"].zeroed_at is None and records["paused"].zeroed_at is None
        assert len({r.uid for r in records.values()}) == 3
    finally:
        await store.close()


async def test_delete_endpoint_removes_only_that_one(store):
    await store.create_endpoint("acme", "e1", SPEC)
    await store.create_endpoint("acme", "e2", SPEC)
    await store.delete_endpoint("acme", "e1")
    assert [r.name for r in await store.list_endpoints()] == ["e2"]
    with pytest.raises(NotFound):
        await store.get_endpoint("acme", "e1")


@pytest.mark.parametrize("call", [
    lambda s: s.get_endpoint("acme", "nope"),
    lambda s: s.update_intent("acme", "nope", 1, paused=True),
    lambda s: s.delete_endpoint("acme", "nope"),
])
async def test_an_unknown_endpoint_is_not_found(store, call):
    await store.create_endpoint("other", "nope", SPEC)
    with pytest.raises(NotFound, match="^endpoint acme/nope does not exist$"):
        await call(store)


async def test_a_failed_revision_is_kept_until_cleared_and_goes_with_its_endpoint(store, db_path):
    rec = await store.create_endpoint("acme", "e1", SPEC)
    await store.save_failure(rec.uid, 2, "exited with code 1")
    await store.save_failure(rec.uid, 3, "x" * 100_000)  # the latest one stands, bounded
    await store.save_failure("no-such-uid", 1, "deleted meanwhile")  # a no-op, as for statuses
    assert await store.failures() == {rec.uid: (3, "x" * store_mod.FAILURE_MAX_CHARS)}
    restarted = await Store.open(db_path)  # another process reads it back
    try:
        assert (await restarted.failures())[rec.uid][0] == 3
    finally:
        await restarted.close()
    await store.save_failure(rec.uid, None)  # resumed
    assert await store.failures() == {}
    await store.save_failure(rec.uid, 2, "again")
    await store.delete_endpoint("acme", "e1")
    assert await store.failures() == {}


# --- audit -------------------------------------------------------------------------------------


async def test_audit_entries_are_listed_latest_first(store, clock):
    first = await store.record_audit("alice", "create", "acme", "e1", {"image": "vLLM"}, "10.0.0.7", "req-1")
    assert first == AuditEntry(T0, "alice", "create", "acme", "e1", {"image": "vLLM"}, "10.0.0.7", "req-1", first.id)
    clock.advance(1)
    await store.record_audit("bob", "pause", "beta", "b1", {}, "10.0.0.8", "req-2")
    clock.advance(1)
    await store.record_audit("alice", "delete", "acme", "e1", {"reason": {"nested": [1, 2]}}, "::1", "req-3")

    assert [(e.request_id, e.at) for e in await store.list_audit()] == [
        ("req-3", T0 + timedelta(seconds=2)), ("req-2", T0 + timedelta(seconds=1)), ("req-1", T0),
    ]
    assert [e.request_id for e in await store.list_audit("acme")] == ["req-3", "req-1"]
    assert [e.request_id for e in await store.list_audit(limit=1)] == ["req-3"]
    assert [e.request_id for e in await store.list_audit("acme", limit=1)] == ["req-3"]
    assert (await store.list_audit("acme"))[0].details == {"reason": {"nested": [1, 2]}}


async def test_audit_survives_the_endpoint(store):
    await store.create_endpoint("acme", "e1", SPEC)
    await store.record_audit("alice", "delete", "acme", "e1", {}, "", "req-1")
    await store.delete_endpoint("acme", "e1")
    assert [e.action for e in await store.list_audit("acme")] == ["delete"]


# --- two stores on one file (the CLI beside `endpointd serve`) --------------------------------


async def test_what_one_store_writes_the_other_reads_at_once(store, db_path, clock):
    other = await Store.open(db_path, now=clock)
    try:
        await other.add_user("alice", ["acme"])
        await other.create_endpoint("acme", "e1", SPEC)
        assert await store.is_member("alice", "acme")
        assert (await store.get_endpoint("acme", "e1")).state == "pending"
        await store.save_status((await store.get_endpoint("acme", "e1")).uid, "running", "")
        assert (await other.get_endpoint("acme", "e1")).state == "running"
    finally:
        await other.close()


async def test_two_stores_writing_at_the_same_time_both_succeed(store, db_path):
    other = await Store.open(db_path)
    try:
        writes = [(store, other)[i % 2].create_endpoint("acme", f"e{i}", SPEC) for i in range(40)]
        writes += [s.record_audit("alice", "pause", "acme", "e1", {}, "", f"{i}") for i in range(40) for s in (store, other)]
        await asyncio.gather(*writes)
        assert len(await other.list_endpoints("acme")) == 40
        assert len(await store.list_audit(limit=1000)) == 80
    finally:
        await other.close()


async def test_a_write_waits_for_another_process_transaction_instead_of_failing(store, db_path):
    reader = await Store.open(db_path)
    holder = raw(db_path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO orgs (name, created_at) VALUES ('from-cli', '2025-01-01T00:00:00.000Z')")
        write = asyncio.create_task(store.create_endpoint("acme", "e1", SPEC))
        await asyncio.sleep(0.3)
        assert not write.done()  # waiting for the other writer's lock, not failed
        assert await reader.namespace_kind("from-cli") is None  # readers go on and see only what is committed
        holder.commit()
        assert (await write).name == "e1"
        assert await reader.namespace_kind("from-cli") == "org"
    finally:
        holder.close()
        await reader.close()


async def test_compact_folds_the_wal_and_leaves_no_statement_open(store, db_path):
    rec = await store.create_endpoint("acme", "e1", {"model": {"secrets": {"K": "plain-secret-42"}}})
    await store.update_intent("acme", "e1", rec.generation, spec={"model": {"secrets": {"K": "sealed"}}})
    await store.compact()
    for path in db_path.parent.iterdir():
        assert b"plain-secret-42" not in path.read_bytes(), path.name
    assert (await store.get_endpoint("acme", "e1")).spec == {"model": {"secrets": {"K": "sealed"}}}


async def test_quotas_are_set_replaced_listed_and_unset_and_survive_a_reopen(store, db_path):
    assert await store.get_quota("acme") is None
    await store.set_quota("acme", Quota(gpus=2, cpus=8.0, memory_bytes=32 << 30, replicas=6, endpoints=10))
    await store.set_quota("bob", Quota(cpus=0.5))
    await store.set_quota("acme", Quota(gpus=4))  # replaced whole: the limits not given are lifted
    other = await Store.open(db_path)  # another process (the CLI, a restarted serve) reads the same
    try:
        assert await other.get_quota("acme") == Quota(gpus=4)
        assert await other.list_quotas() == {"acme": Quota(gpus=4), "bob": Quota(cpus=0.5)}
    finally:
        await other.close()
    await store.unset_quota("acme")
    assert await store.get_quota("acme") is None
    with pytest.raises(NotFound, match="namespace acme has no quota"):
        await store.unset_quota("acme")
    assert list(await store.list_quotas()) == ["bob"]


async def test_count_endpoints_counts_every_endpoint_of_a_namespace(store):
    for name in ("e1", "e2"):
        await store.create_endpoint("acme", name, SPEC)
    await store.create_endpoint("other", "e1", SPEC)
    rec = await store.get_endpoint("acme", "e2")
    await store.update_intent("acme", "e2", rec.generation, paused=True)  # paused: it still exists
    assert (await store.count_endpoints("acme"), await store.count_endpoints("nobody")) == (2, 0)


# --- rate limits -----------------------------------------------------------------------------------


async def test_rate_limits_are_set_replaced_deleted_and_kept_across_a_reopen(store, db_path, clock):
    assert await store.rate_limits() == {}
    await store.set_rate_limit("acme", Override(rpm=600))
    await store.set_rate_limit("beta", Override(rpm=0, concurrent=4))
    await store.set_rate_limit("acme", Override(concurrent=8))  # a PUT: the whole override replaced
    reopened = await Store.open(db_path, now=clock)
    try:
        assert await reopened.rate_limits() == {"acme": Override(None, 8), "beta": Override(0, 4)}
    finally:
        await reopened.close()
    assert await store.delete_rate_limit("acme")
    assert not await store.delete_rate_limit("acme")
    assert await store.rate_limits() == {"beta": Override(0, 4)}
