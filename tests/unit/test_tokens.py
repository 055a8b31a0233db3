"""Tokens: the helpers, and creating, verifying, revoking and listing them in the store, admin bootstrap included."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest

from autoscaler.store import tokens
from autoscaler.store.store import ADMIN, Conflict, NotFound, Store, TokenInfo
from proxy.core.control import Identity
from tests.unit.test_store import T0, Clock

ALICE = Identity("alice", frozenset({"acme", "beta"}), False)
ADMIN_IDENTITY = Identity(ADMIN, frozenset(), True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "endpointd.db"


@pytest.fixture
async def store(db_path, clock):
    opened = await Store.open(db_path, now=clock)
    await opened.add_user("alice", ["acme", "beta"])
    await opened.add_user("bob")
    yield opened
    await opened.close()


# --- the helpers -------------------------------------------------------------------------------


def test_generated_tokens_are_prefixed_random_and_url_safe():
    made = {tokens.generate() for _ in range(200)}
    assert len(made) == 200
    assert all(re.fullmatch(r"epd_[A-Za-z0-9_-]{43}", token) for token in made)  # 32 bytes, base64url


def test_ids_are_short_hex():
    assert re.fullmatch(r"[0-9a-f]{12}", tokens.new_id())


@pytest.mark.parametrize(("token", "digest"), [
    ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),  # the FIPS 180-2 example
    ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
])
def test_hash_token_is_sha256_hex(token, digest):
    assert tokens.hash_token(token) == digest


def test_hash_token_takes_any_header_text():
    assert tokens.hash_token("\udcff") != tokens.hash_token("\udcfe")  # undecodable header bytes


@pytest.mark.parametrize(("token", "hint"), [
    ("epd_" + "x" * 39 + "WXyz", "WXyz"),
    ("a" * 16 + "1234", "1234"),  # 20 characters: the shortest that shows a hint
    ("a" * 15 + "1234", ""),  # an operator's short admin token shows nothing
    ("", ""),
])
def test_hint(token, hint):
    assert tokens.hint(token) == hint


@pytest.mark.parametrize(("given", "expected", "equal"), [
    ("epd_same", "epd_same", True),
    ("epd_same", "epd_sane", False),
    ("epd_same", "epd_same_longer", False),
    ("", "", True),
    ("café", "café", True),  # hmac.compare_digest alone raises TypeError on non-ASCII str
    ("café", "cafe", False),
    ("\udcff", "x", False),
])
def test_same(given, expected, equal):
    assert tokens.same(given, expected) is equal


# --- in the store ------------------------------------------------------------------------------


async def test_create_token_returns_the_value_once_and_stores_only_its_hash(store, db_path):
    plaintext, info = await store.create_token("alice", "laptop")
    assert plaintext.startswith("epd_")
    assert info == TokenInfo(info.id, "alice", "laptop", plaintext[-4:], T0, None)
    assert re.fullmatch(r"[0-9a-f]{12}", info.id)
    on_disk = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))  # the WAL too
    assert tokens.hash_token(plaintext).encode() in on_disk
    assert plaintext.encode() not in on_disk


def test_token_info_never_carries_the_value_or_the_hash():
    assert [f.name for f in dataclasses.fields(TokenInfo)] == ["id", "user", "label", "hint", "created_at", "revoked_at", "scopes"]


async def test_create_token_for_an_unknown_user(store):
    with pytest.raises(NotFound, match="^user carol does not exist; add it first with `endpointd users add carol`$"):
        await store.create_token("carol")


async def test_verify_token_says_who_holds_it(store):
    alice, _ = await store.create_token("alice")
    bob, _ = await store.create_token("bob", "ci")
    assert await store.verify_token(alice) == ALICE
    assert await store.verify_token(bob) == Identity("bob", frozenset(), False)
    assert await store.verify_token(alice + "x") is None
    assert await store.verify_token("") is None


async def test_a_membership_added_later_counts_at_the_next_verify(store):
    token, _ = await store.create_token("bob")
    await store.add_user("bob", ["acme"])
    assert (await store.verify_token(token)).orgs == frozenset({"acme"})


@pytest.mark.parametrize("by", ["id", "value"])
async def test_revoke_token_by_id_or_value(store, clock, by):
    token, info = await store.create_token("alice", "laptop")
    other, _ = await store.create_token("alice", "ci")
    clock.advance(60)
    revoked = await store.revoke_token(info.id if by == "id" else token)
    assert revoked == dataclasses.replace(info, revoked_at=T0 + timedelta(seconds=60))
    assert await store.verify_token(token) is None
    assert await store.verify_token(other) == ALICE


async def test_revoking_twice_keeps_the_first_time(store, clock):
    _, info = await store.create_token("alice")
    first = await store.revoke_token(info.id)
    clock.advance(60)
    assert await store.revoke_token(info.id) == first


@pytest.mark.parametrize("key", ["0123456789ab", "epd_never-issued"])
async def test_revoke_an_unknown_token(store, key):
    with pytest.raises(NotFound, match="^no token has that id or value; `endpointd tokens list USER` shows the ids$"):
        await store.revoke_token(key)


async def test_list_tokens_in_creation_order_revoked_ones_included(store, clock):
    _, first = await store.create_token("alice", "laptop")
    clock.advance(1)
    _, second = await store.create_token("alice")
    await store.create_token("bob")
    clock.advance(1)
    await store.revoke_token(first.id)
    assert await store.list_tokens("alice") == [
        dataclasses.replace(first, revoked_at=T0 + timedelta(seconds=2)), second,
    ]
    assert await store.list_tokens("bob") != []


async def test_list_tokens_of_a_user_without_any_or_of_no_user(store):
    assert await store.list_tokens("alice") == []
    with pytest.raises(NotFound, match="user carol does not exist"):
        await store.list_tokens("carol")


# --- two stores on one file: `endpointd tokens ...` while `endpointd serve` runs ---------------


async def test_a_token_created_in_one_store_verifies_in_the_other_and_revoking_there_ends_it(store, db_path):
    cli = await Store.open(db_path)
    try:
        token, info = await cli.create_token("alice", "from the CLI")
        assert await store.verify_token(token) == ALICE
        await cli.revoke_token(info.id)
        assert await store.verify_token(token) is None
        assert (await store.list_tokens("alice"))[0].revoked_at is not None
    finally:
        await cli.close()


# --- the bootstrap admin -----------------------------------------------------------------------

ENV = "operator-chosen-admin-token"


async def reopen(db_path, clock) -> Store:
    """A restart of `endpointd serve`."""
    return await Store.open(db_path, now=clock)


async def test_an_env_token_becomes_the_admin_token_idempotently(db_path, clock):
    for _ in range(2):  # a restart with the same variable changes nothing
        store = await reopen(db_path, clock)
        try:
            assert await store.ensure_admin(ENV) is None
            assert await store.verify_token(ENV) == ADMIN_IDENTITY
            [info] = await store.list_tokens(ADMIN)
            assert (info.label, info.hint, info.created_at, info.revoked_at) == ("ENDPOINTD_ADMIN_TOKEN", "oken", T0, None)
        finally:
            await store.close()
        clock.advance(60)


async def test_a_changed_env_token_revokes_the_one_before(store, clock):
    await store.ensure_admin(ENV)
    clock.advance(60)
    await store.ensure_admin(ENV + "-rotated")
    assert await store.verify_token(ENV) is None
    assert await store.verify_token(ENV + "-rotated") == ADMIN_IDENTITY
    assert [i.revoked_at for i in await store.list_tokens(ADMIN)] == [T0 + timedelta(seconds=60), None]


async def test_without_an_env_token_one_is_generated_once(db_path, clock):
    store = await reopen(db_path, clock)
    try:
        generated = await store.ensure_admin(None)
        assert generated.startswith("epd_")
        assert await store.verify_token(generated) == ADMIN_IDENTITY
        assert await store.ensure_admin(None) is None
    finally:
        await store.close()
    store = await reopen(db_path, clock)
    try:
        assert await store.ensure_admin(None) is None
        assert [i.label for i in await store.list_tokens(ADMIN)] == ["generated admin token"]
    finally:
        await store.close()


async def test_a_new_admin_token_is_generated_when_the_last_one_was_revoked(store):
    first = await store.ensure_admin(None)
    await store.revoke_token(first)
    second = await store.ensure_admin(None)
    assert second not in (None, first)
    assert await store.verify_token(second) == ADMIN_IDENTITY


async def test_setting_an_env_token_later_rotates_the_generated_one_out(store):
    generated = await store.ensure_admin(None)
    await store.ensure_admin(ENV)
    assert await store.verify_token(ENV) == ADMIN_IDENTITY
    assert await store.verify_token(generated) is None  # it once stayed valid: a leaked file kept working
    await store.ensure_admin(ENV)  # and a restart with the same variable changes nothing
    assert await store.verify_token(ENV) == ADMIN_IDENTITY


async def test_the_generated_token_copied_into_the_env_is_the_env_token_from_then_on(store):
    generated = await store.ensure_admin(None)
    await store.ensure_admin(generated)
    assert len(await store.list_tokens(ADMIN)) == 1
    await store.ensure_admin(ENV)
    assert await store.verify_token(generated) is None


async def test_an_env_token_without_the_variable_stays_valid(store):
    await store.ensure_admin(ENV)
    assert await store.ensure_admin(None) is None  # admin has a live token: nothing generated
    assert await store.verify_token(ENV) == ADMIN_IDENTITY


async def test_an_existing_admin_user_gets_the_admin_flag(store):
    await store.add_user(ADMIN, ["ops"])
    await store.ensure_admin(ENV)
    assert await store.verify_token(ENV) == Identity(ADMIN, frozenset({"ops"}), True)


async def test_a_revoked_env_token_does_not_come_back(store):
    await store.ensure_admin(ENV)
    [info] = await store.list_tokens(ADMIN)
    await store.revoke_token(ENV)
    with pytest.raises(Conflict, match=f"^ENDPOINTD_ADMIN_TOKEN is token {info.id}, revoked at 2025-01-02T03:04:05.678Z; set a new ENDPOINTD_ADMIN_TOKEN$"):
        await store.ensure_admin(ENV)
    assert await store.verify_token(ENV) is None


async def test_switching_the_env_token_back_is_refused(store):
    await store.ensure_admin(ENV)
    await store.ensure_admin(ENV + "-rotated")
    with pytest.raises(Conflict, match="set a new ENDPOINTD_ADMIN_TOKEN"):
        await store.ensure_admin(ENV)
    assert await store.verify_token(ENV + "-rotated") == ADMIN_IDENTITY  # the refused call changed nothing


async def test_an_env_token_of_another_user_is_refused(store):
    bobs, _ = await store.create_token("bob")
    with pytest.raises(Conflict, match="^ENDPOINTD_ADMIN_TOKEN is a token of user bob; set ENDPOINTD_ADMIN_TOKEN to a token of its own$"):
        await store.ensure_admin(bobs)
    assert await store.verify_token(bobs) == Identity("bob", frozenset(), False)


async def test_no_admin_when_admin_is_an_org(store):
    await store.add_user("carol", [ADMIN])
    with pytest.raises(Conflict, match="admin is an org"):
        await store.ensure_admin(None)
    assert await store.namespace_kind(ADMIN) == "org"

