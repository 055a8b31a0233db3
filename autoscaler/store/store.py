"""The durable desired state: users, orgs, tokens, endpoints, quotas, the audit log and an admin's
rate limits per namespace, in SQLite; beside it, what the control plane remembers of each endpoint:
its events and its replicas' timelines; and each endpoint's usage, by interval, as the usage meter
writes it.

The CLI (`endpointd tokens create`) writes to the same file while `endpointd serve` runs: WAL lets
readers go on while one process writes, a busy timeout makes a writer wait for the other's
transaction instead of failing, and every read is a fresh snapshot, so a token created or revoked
by one process counts in the other at its next lookup. The schema is versioned with
`PRAGMA user_version`; each migration runs once, in order, in a transaction of its own.

Errors, one root:
    StoreError     the file cannot be used (schema newer than this endpointd, no WAL)
      NotFound     no such user, token or endpoint
      Conflict     a name is taken, or a token cannot be (re)used as asked
        Stale      an endpoint changed since the caller read it (generation check)
        DomainTaken another endpoint holds that route domain
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from autoscaler.model import events as events_mod
from autoscaler.model import timelines as replicas_mod
from autoscaler.model.events import Event
from autoscaler.model.quotas import Quota
from autoscaler.model.state import State
from autoscaler.model.times import wire_time
from autoscaler.model.usage import (
    Buckets,
    Hardware,
    IntervalReplicas,
    IntervalTraffic,
    Metered,
    ReplicaRow,
    TrafficRow,
)
from autoscaler.store import tokens
from engines.errors import EndpointdError
from proxy.core.control import Identity
from proxy.core.limits import Override

ADMIN = "admin"
ADMIN_ENV = "ENDPOINTD_ADMIN_TOKEN"
GENERATED_LABEL = "generated admin token"
# What a token may do beyond its user's rights: `metrics` may scrape /metrics (Prometheus).
SCOPES = frozenset({"metrics"})
# How long a writer waits for another process's transaction before failing: far longer than any
# transaction here takes (milliseconds), short enough that a stuck writer surfaces as an error.
BUSY_TIMEOUT_MS = 5000
# A failed start's error (an engine's last log lines, bounded by the launcher) as kept for a restart.
FAILURE_MAX_CHARS = 8000

# Append only: a database at version N runs MIGRATIONS[N:] on open. Never edit a released entry.
MIGRATIONS = [
    # 1: the first schema.
    """
    CREATE TABLE users (name TEXT PRIMARY KEY, is_admin INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
    CREATE TABLE orgs (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
    CREATE TABLE memberships (
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        org TEXT NOT NULL REFERENCES orgs(name) ON DELETE CASCADE,
        PRIMARY KEY (user, org)
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        label TEXT,
        hash TEXT NOT NULL UNIQUE,
        from_env INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE endpoints (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        revision INTEGER NOT NULL DEFAULT 1,
        paused INTEGER NOT NULL DEFAULT 0,
        target_replicas INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (namespace, name)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        details TEXT NOT NULL,
        source_ip TEXT NOT NULL,
        request_id TEXT NOT NULL
    );
    """,
    # 2: a hint of each token for listings (tokens made before have none); indexes for the
    # per-user token listing and the per-namespace audit listing.
    """
    ALTER TABLE tokens ADD COLUMN hint TEXT NOT NULL DEFAULT '';
    CREATE INDEX tokens_by_user ON tokens (user);
    CREATE INDEX audit_by_namespace ON audit (namespace, id);
    """,
    # 3: one owner per endpoint. Intent carries a generation that every API write compares and
    # sets, and a user's scale-to-zero with its time; the owner's effective state (last wake,
    # idle scale-down) is persisted beside it, so a restart never changes the replica count. A
    # uid tells a re-created endpoint from the one deleted before it. The replica target is no
    # longer stored: it follows from the rest. An endpoint left at zero by the old schema is
    # kept at zero, as a scale-to-zero. A route domain is unique across endpoints (a second one
    # received every other endpoint's traffic); of older endpoints sharing one, the first keeps it.
    # A token may carry scopes beyond its user's rights (`metrics`: may scrape /metrics).
    """
    ALTER TABLE endpoints ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE endpoints ADD COLUMN uid TEXT NOT NULL DEFAULT '';
    ALTER TABLE endpoints ADD COLUMN zeroed_at REAL;
    ALTER TABLE endpoints ADD COLUMN woken_at REAL;
    ALTER TABLE endpoints ADD COLUMN idle_at REAL;
    UPDATE endpoints SET uid = lower(hex(randomblob(8)));
    UPDATE endpoints SET zeroed_at = unixepoch() WHERE target_replicas = 0 AND paused = 0;
    ALTER TABLE endpoints DROP COLUMN target_replicas;
    CREATE UNIQUE INDEX endpoints_by_uid ON endpoints (uid);
    ALTER TABLE endpoints ADD COLUMN domain TEXT;
    UPDATE endpoints SET domain = lower(json_extract(spec, '$.route.domain')) WHERE rowid IN (
        SELECT min(rowid) FROM endpoints WHERE json_extract(spec, '$.route.domain') IS NOT NULL
        GROUP BY lower(json_extract(spec, '$.route.domain')));
    UPDATE endpoints SET spec = json_set(spec, '$.route.domain', json('null'))
        WHERE domain IS NULL AND json_extract(spec, '$.route.domain') IS NOT NULL;
    CREATE UNIQUE INDEX endpoints_by_domain ON endpoints (domain);
    ALTER TABLE tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
    """,
    # 4: the control plane's events and each replica's timeline, kept across restarts (they were
    # in memory only). An event's id is the cursor of `…/events?since=`: AUTOINCREMENT never
    # hands out an id again, even after the newest rows were pruned or the endpoint deleted.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        replica TEXT,
        inputs TEXT NOT NULL
    );
    CREATE INDEX events_by_uid ON events (uid, id);
    CREATE INDEX events_by_at ON events (at);
    CREATE TABLE replicas (
        uid TEXT NOT NULL,
        id TEXT NOT NULL,
        stopped_at REAL,
        record TEXT NOT NULL,
        PRIMARY KEY (uid, id)
    );
    CREATE INDEX replicas_by_stop ON replicas (stopped_at);
    """,
    # 5: an endpoint's failed revision and why, kept by its owner: a restart neither retries a
    # revision that failed to start nor stops the older one that serves in its place.
    """
    CREATE TABLE endpoint_failures (
        uid TEXT PRIMARY KEY REFERENCES endpoints(uid) ON DELETE CASCADE,
        revision INTEGER NOT NULL,
        error TEXT NOT NULL
    );
    """,
    # 6: each namespace's quota, set by an admin; a NULL limit is unlimited. A namespace is a user
    # or an org (two tables), so no foreign key: the API checks that it exists.
    """
    CREATE TABLE quotas (
        namespace TEXT PRIMARY KEY,
        gpus INTEGER,
        cpus REAL,
        memory_bytes INTEGER,
        replicas INTEGER,
        endpoints INTEGER,
        updated_at TEXT NOT NULL
    );
    """,
    # 7: an admin's rate limits of a namespace, over the proxy's defaults; NULL: the default.
    """
    CREATE TABLE rate_limits (
        namespace TEXT PRIMARY KEY,
        rpm INTEGER,
        concurrent INTEGER,
        updated_at TEXT NOT NULL
    );
    """,
    # 8: usage, by endpoint name (a deleted endpoint's usage stays: it was used), one row per usage
    # interval that saw any: replica-seconds by hardware, and what the endpoint served. Beside
    # them, what the meter keeps of each replica so that a restart of endpointd neither loses nor
    # counts twice what happened while it was down: up to when its replica-seconds are written,
    # and its engine's token counters as last read.
    """
    CREATE TABLE usage_replicas (
        namespace TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        start REAL NOT NULL,
        accelerator TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        instance_size TEXT NOT NULL,
        seconds REAL NOT NULL,
        PRIMARY KEY (namespace, endpoint, start, accelerator, instance_type, instance_size)
    );
    CREATE INDEX usage_replicas_by_start ON usage_replicas (start);
    CREATE TABLE usage_traffic (
        namespace TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        start REAL NOT NULL,
        requests INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL,
        tokens_in REAL,
        tokens_out REAL,
        PRIMARY KEY (namespace, endpoint, start)
    );
    CREATE INDEX usage_traffic_by_start ON usage_traffic (start);
    CREATE TABLE usage_meter (
        replica TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        accelerator TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        instance_size TEXT NOT NULL,
        counted_to REAL,
        tokens_in REAL,
        tokens_out REAL
    );
    """,
]


class StoreError(EndpointdError):
    pass


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class Stale(Conflict):
    """The endpoint changed since it was read (its generation moved on): read it again."""


class DomainTaken(Conflict):
    """Another endpoint holds the route domain; who may be told depends on who asks."""

    def __init__(self, domain: str, namespace: str, name: str) -> None:
        super().__init__(f"route.domain {domain} is already taken by endpoint {namespace}/{name}")
        self.domain, self.namespace, self.name = domain, namespace, name


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    orgs: frozenset[str]
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listings show it: never its value or its hash."""

    id: str
    user: str
    label: str | None
    hint: str  # the token's last characters, "" when it is too short to show any
    created_at: datetime
    revoked_at: datetime | None
    scopes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    namespace: str
    name: str
    spec: dict[str, Any]  # opaque here: the API layer's serialized spec
    state: str
    message: str
    revision: int  # bumped when the spec changes in a way that needs new containers
    paused: bool
    created_at: datetime
    updated_at: datetime
    domain: str | None  # the route domain, unique across endpoints
    uid: str  # this incarnation: a re-created endpoint of the same name has another
    generation: int  # bumped by every intent write; writes compare it first
    zeroed_at: float | None  # a user's scale-to-zero (unix time)
    woken_at: float | None  # effective: the last wake (unix time)
    idle_at: float | None  # effective: the last idle scale-down to zero (unix time)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    namespace: str
    name: str
    details: dict[str, Any]
    source_ip: str
    request_id: str
    id: int = 0  # increasing: the cursor of a listing


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _time_or_none(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script, split where SQLite says a statement is complete (a `;`
    inside a string or a trigger body does not end one). `executescript` cannot be used: it
    commits first, which would take the migration out of its transaction."""
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                yield pending
            pending = ""


def _token(row: aiosqlite.Row) -> TokenInfo:
    return TokenInfo(
        row["id"], row["user"], row["label"], row["hint"], _time(row["created_at"]), _time_or_none(row["revoked_at"]),
        _scopes(row["scopes"]),
    )


def _scopes(text: str) -> frozenset[str]:
    return frozenset(filter(None, text.split(",")))


def _endpoint(row: aiosqlite.Row) -> EndpointRecord:
    return EndpointRecord(
        row["namespace"], row["name"], json.loads(row["spec"]), row["state"], row["message"], row["revision"],
        bool(row["paused"]), _time(row["created_at"]), _time(row["updated_at"]), row["domain"], row["uid"],
        row["generation"],
        row["zeroed_at"], row["woken_at"], row["idle_at"],
    )


def _quota(row: aiosqlite.Row) -> Quota:
    return Quota(row["gpus"], row["cpus"], row["memory_bytes"], row["replicas"], row["endpoints"])


def _audit(row: aiosqlite.Row) -> AuditEntry:
    return AuditEntry(
        _time(row["at"]), row["actor"], row["action"], row["namespace"], row["name"], json.loads(row["details"]),
        row["source_ip"], row["request_id"], row["id"],
    )


class Store:
    def __init__(self, db: aiosqlite.Connection, now: Callable[[], datetime]) -> None:
        self._db = db
        self._now = now
        # One connection serves every coroutine of the process, and a statement sent while another
        # coroutine's transaction is open would become part of it: writers take turns.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Store:
        """Open (creating the file and its directory) and migrate. `now` gives aware datetimes."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 before SQLite opens it: its WAL and shared-memory files take the database's mode.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        db = await aiosqlite.connect(path, isolation_level=None)  # transactions are explicit
        try:
            db.row_factory = aiosqlite.Row
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Overwritten and deleted content is zeroed, so a secret sealed in place of its plain
            # text (or deleted with its endpoint) does not linger in free pages.
            await db.execute("PRAGMA secure_delete = ON")
            await db.execute("PRAGMA foreign_keys = ON")
            mode = await _journal_mode_wal(db)
            if mode != "wal":
                raise StoreError(
                    f"{path}: SQLite cannot use WAL there (journal mode {mode}); put the data directory on a local filesystem"
                )
            store = cls(db, now)
            await store._migrate(path)
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self, path: Path) -> None:
        version = await self._user_version()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{path} has schema version {version}, newer than this endpointd knows ({len(MIGRATIONS)}); "
                "upgrade endpointd or point --data-dir elsewhere"
            )
        for number in range(version + 1, len(MIGRATIONS) + 1):
            async with self._transaction():
                # Asked again under the write lock: another process opening the same file at the
                # same moment may have applied this migration while we waited for the lock.
                if await self._user_version() < number:
                    for statement in _statements(MIGRATIONS[number - 1]):
                        await self._db.execute(statement)
                    await self._db.execute(f"PRAGMA user_version = {number}")

    async def _user_version(self) -> int:
        (version,) = await self._row("PRAGMA user_version")
        return version

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        # BEGIN IMMEDIATE takes SQLite's write lock up front (waiting up to busy_timeout for
        # another process), so a transaction that reads and then writes cannot fail half-way with
        # SQLITE_BUSY, and what it read stays true until it commits.
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await self._db.rollback()
                raise
            await self._db.commit()

    async def _one(self, sql: str, *args: Any) -> aiosqlite.Row | None:
        # The cursor is closed before returning, so an INSERT/UPDATE ... RETURNING is finished
        # (and can be committed) even though only its first row is read.
        async with self._db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def _row(self, sql: str, *args: Any) -> aiosqlite.Row:
        """The row of a statement that always answers one: a PRAGMA, an INSERT ... RETURNING."""
        row = await self._one(sql, *args)
        assert row is not None, sql
        return row

    async def _all(self, sql: str, *args: Any) -> list[aiosqlite.Row]:
        async with self._db.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    def _stamp(self) -> str:
        return wire_time(self._now())

    # --- users and orgs ----------------------------------------------------------------------

    async def namespace_kind(self, name: str) -> Literal["user", "org"] | None:
        row = await self._one(
            "SELECT 'user' FROM users WHERE name = ? UNION ALL SELECT 'org' FROM orgs WHERE name = ?", name, name
        )
        return None if row is None else row[0]

    async def add_user(self, name: str, orgs: Iterable[str] = (), *, is_admin: bool = False) -> UserInfo:
        """Create the user, or add memberships to an existing one; missing orgs are created.
        `is_admin` only ever grants: adding an admin again without it keeps them admin."""
        async with self._transaction():
            await self._add_user(name, tuple(orgs), is_admin)
        return await self.get_user(name)

    async def _add_user(self, name: str, orgs: tuple[str, ...], is_admin: bool) -> None:
        # Users and orgs share one namespace (an endpoint belongs to either). The caller holds the
        # write transaction, so no other process can create a clashing name between check and insert.
        if await self.namespace_kind(name) == "org":
            raise Conflict(f"{name} is an org; users and orgs share one namespace, so choose another user name")
        for org in orgs:
            if org == name or await self.namespace_kind(org) == "user":
                raise Conflict(f"{org} is a user name, so it cannot also be an org; choose another org name")
        now = self._stamp()
        await self._db.execute(
            "INSERT INTO users (name, is_admin, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET is_admin = MAX(is_admin, excluded.is_admin)",
            (name, int(is_admin), now),
        )
        await self._db.executemany("INSERT OR IGNORE INTO orgs (name, created_at) VALUES (?, ?)", [(org, now) for org in orgs])
        await self._db.executemany("INSERT OR IGNORE INTO memberships (user, org) VALUES (?, ?)", [(name, org) for org in orgs])

    async def get_user(self, name: str) -> UserInfo:
        row = await self._one("SELECT * FROM users WHERE name = ?", name)
        if row is None:
            raise NotFound(f"user {name} does not exist; add it with `endpointd users add {name}`")
        return UserInfo(row["name"], await self.user_orgs(name), bool(row["is_admin"]), _time(row["created_at"]))

    async def user_orgs(self, name: str) -> frozenset[str]:
        return frozenset(row["org"] for row in await self._all("SELECT org FROM memberships WHERE user = ?", name))

    async def is_member(self, user: str, namespace: str) -> bool:
        """Whether `namespace` is the user's own or an org the user belongs to (admin rights aside)."""
        if user == namespace:
            return True
        return await self._one("SELECT 1 FROM memberships WHERE user = ? AND org = ?", user, namespace) is not None

    # --- tokens --------------------------------------------------------------------------------

    async def create_token(
        self, user: str, label: str | None = None, scopes: Iterable[str] = ()
    ) -> tuple[str, TokenInfo]:
        """A new token for `user`: the value, which is not stored and cannot be shown again, and its info."""
        unknown = sorted(set(scopes) - SCOPES)
        if unknown:
            raise StoreError(f"unknown token scope {unknown[0]!r}; the scopes are: {', '.join(sorted(SCOPES))}")
        plaintext = tokens.generate()
        async with self._transaction():
            await self._require_user(user)
            info = await self._insert_token(user, plaintext, label, scopes)
        return plaintext, info

    async def _insert_token(self, user: str, plaintext: str, label: str | None, scopes: Iterable[str] = ()) -> TokenInfo:
        row = await self._row(
            "INSERT INTO tokens (id, user, label, hash, hint, scopes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
            tokens.new_id(), user, label, tokens.hash_token(plaintext), tokens.hint(plaintext),
            ",".join(sorted(set(scopes))), self._stamp(),
        )
        return _token(row)

    async def verify_token(self, plaintext: str) -> Identity | None:
        """Who holds this token, or None when it is unknown or revoked."""
        # The lookup compares digests in an index, not tokens, so it need not be constant-time:
        # its timing could at most tell how many leading characters of the SHA-256 of the caller's
        # own guess match a stored digest, and that helps no one find a token that hashes there.
        rows = await self._all(
            "SELECT u.name, u.is_admin, t.scopes, m.org FROM tokens t JOIN users u ON u.name = t.user "
            "LEFT JOIN memberships m ON m.user = u.name WHERE t.hash = ? AND t.revoked_at IS NULL",
            tokens.hash_token(plaintext),
        )
        if not rows:
            return None
        orgs = frozenset(row["org"] for row in rows if row["org"] is not None)
        return Identity(rows[0]["name"], orgs, bool(rows[0]["is_admin"]), scopes=_scopes(rows[0]["scopes"]))

    async def revoke_token(self, token_id_or_plaintext: str) -> TokenInfo:
        """Revoke a token named by its id or by its value. Revoking twice keeps the first time."""
        async with self._transaction():
            row = await self._one(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? OR hash = ? RETURNING *",
                self._stamp(), token_id_or_plaintext, tokens.hash_token(token_id_or_plaintext),
            )
        if row is None:
            raise NotFound("no token has that id or value; `endpointd tokens list USER` shows the ids")
        return _token(row)

    async def list_tokens(self, user: str) -> list[TokenInfo]:
        rows = await self._all("SELECT * FROM tokens WHERE user = ? ORDER BY rowid", user)
        if not rows:
            await self._require_user(user)
        return [_token(row) for row in rows]

    async def ensure_admin(self, env_token: str | None) -> str | None:
        """Make sure user `admin` exists, is an admin and has a live token.

        With `env_token` (ENDPOINTD_ADMIN_TOKEN) that token is registered for admin, idempotently,
        and an earlier, different ENDPOINTD_ADMIN_TOKEN and the generated token are revoked. Without, a token is generated
        only when admin has no live one, and returned so the caller can hand it over once; None
        otherwise."""
        async with self._transaction():
            await self._add_user(ADMIN, (), is_admin=True)
            if env_token is None:
                if await self._one("SELECT 1 FROM tokens WHERE user = ? AND revoked_at IS NULL", ADMIN):
                    return None
                generated = tokens.generate()
                await self._insert_token(ADMIN, generated, GENERATED_LABEL)
                return generated
            digest = tokens.hash_token(env_token)
            known = await self._one("SELECT id, user, revoked_at FROM tokens WHERE hash = ?", digest)
            if known is not None and known["user"] != ADMIN:
                raise Conflict(f"{ADMIN_ENV} is a token of user {known['user']}; set {ADMIN_ENV} to a token of its own")
            if known is not None and known["revoked_at"] is not None:
                # Revocation is final: a leaked token revoked by hand must not come back on restart.
                raise Conflict(
                    f"{ADMIN_ENV} is token {known['id']}, revoked at {known['revoked_at']}; set a new {ADMIN_ENV}"
                )
            now = self._stamp()
            # Rotation: an earlier environment token, and the token generated before one was set,
            # stop working once the operator sets ENDPOINTD_ADMIN_TOKEN.
            await self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE user = ? AND hash != ? AND revoked_at IS NULL "
                "AND (from_env = 1 OR label = ?)",
                (now, ADMIN, digest, GENERATED_LABEL),
            )
            # Upsert: a token already registered (the same variable at an earlier start, or the
            # generated one copied into the variable) becomes the environment's, nothing else changes.
            await self._db.execute(
                "INSERT INTO tokens (id, user, label, hash, hint, from_env, created_at) VALUES (?, ?, ?, ?, ?, 1, ?) "
                "ON CONFLICT (hash) DO UPDATE SET from_env = 1",
                (tokens.new_id(), ADMIN, ADMIN_ENV, digest, tokens.hint(env_token), now),
            )
            return None

    async def _require_user(self, user: str) -> None:
        if await self._one("SELECT 1 FROM users WHERE name = ?", user) is None:
            raise NotFound(f"user {user} does not exist; add it first with `endpointd users add {user}`")

    # --- endpoints -----------------------------------------------------------------------------

    async def create_endpoint(
        self, namespace: str, name: str, spec: dict[str, Any], *, state: str = State.PENDING.value, domain: str | None = None
    ) -> EndpointRecord:
        now = self._stamp()
        async with self._transaction():
            await self._free_domain(domain, namespace, name)
            if await self._one("SELECT 1 FROM endpoints WHERE namespace = ? AND name = ?", namespace, name):
                raise Conflict(f"endpoint {namespace}/{name} already exists; choose another name or update it")
            row = await self._row(
                "INSERT INTO endpoints (namespace, name, spec, state, domain, uid, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                namespace, name, json.dumps(spec), str(state), domain, secrets.token_hex(8), now, now,
            )
        return _endpoint(row)

    async def _free_domain(self, domain: str | None, namespace: str, name: str) -> None:
        """DomainTaken unless `domain` is free or already this endpoint's (inside the caller's
        write transaction, so no other writer can take it between the check and the write)."""
        if domain is None:
            return
        row = await self._one("SELECT namespace, name FROM endpoints WHERE domain = ?", domain)
        if row is not None and (row["namespace"], row["name"]) != (namespace, name):
            raise DomainTaken(domain, row["namespace"], row["name"])

    async def get_endpoint(self, namespace: str, name: str) -> EndpointRecord:
        row = await self._one("SELECT * FROM endpoints WHERE namespace = ? AND name = ?", namespace, name)
        if row is None:
            raise NotFound(f"endpoint {namespace}/{name} does not exist")
        return _endpoint(row)

    async def list_endpoints(self, namespace: str | None = None) -> list[EndpointRecord]:
        if namespace is None:
            rows = await self._all("SELECT * FROM endpoints ORDER BY namespace, name")
        else:
            rows = await self._all("SELECT * FROM endpoints WHERE namespace = ? ORDER BY name", namespace)
        return [_endpoint(row) for row in rows]

    async def update_intent(
        self,
        namespace: str,
        name: str,
        generation: int,
        *,
        spec: dict[str, Any] | None = None,
        bump_revision: bool = False,
        paused: bool | None = None,
        zeroed_at: float | None | Literal["keep"] = "keep",
        domain: str | None | Literal["keep"] = "keep",
    ) -> EndpointRecord:
        """Change what people declared, only if the endpoint is still at `generation` (else Stale:
        read it again and re-apply the change), and move it to the next generation."""
        changes: dict[str, Any] = {}
        if spec is not None:
            changes["spec"] = json.dumps(spec)
        if paused is not None:
            changes["paused"] = int(paused)
        if zeroed_at != "keep":
            changes["zeroed_at"] = zeroed_at
        if domain != "keep":
            changes["domain"] = domain
        sets = [f"{column} = ?" for column in changes]
        if bump_revision:
            sets.append("revision = revision + 1")
        async with self._transaction():
            if domain != "keep":
                await self._free_domain(domain, namespace, name)
            row = await self._one(
                f"UPDATE endpoints SET {', '.join([*sets, 'generation = generation + 1', 'updated_at = ?'])} "
                "WHERE namespace = ? AND name = ? AND generation = ? RETURNING *",
                *changes.values(), self._stamp(), namespace, name, generation,
            )
            if row is None:
                await self.get_endpoint(namespace, name)  # NotFound when it is gone
                raise Stale(f"endpoint {namespace}/{name} changed while this change was made; retry it")
        return _endpoint(row)

    async def compact(self) -> None:
        """Fold the WAL into the database and rewrite it: no old page (a secret's plain text before
        it was sealed, a deleted endpoint) survives in the WAL or in free pages."""
        async with self._write_lock:
            await self._all("PRAGMA wal_checkpoint(TRUNCATE)")  # read to the end: no statement left open
            await self._all("VACUUM")
            await self._all("PRAGMA wal_checkpoint(TRUNCATE)")

    async def save_status(self, uid: str, state: str, message: str) -> None:
        """The owner's view of the endpoint; a no-op for a deleted incarnation."""
        async with self._transaction():
            await self._db.execute(
                "UPDATE endpoints SET state = ?, message = ?, updated_at = ? WHERE uid = ?",
                (str(state), message, self._stamp(), uid),
            )

    async def save_signals(self, uid: str, woken_at: float | None, idle_at: float | None) -> None:
        """The owner's effective state; a no-op for a deleted incarnation."""
        async with self._transaction():
            await self._db.execute(
                "UPDATE endpoints SET woken_at = ?, idle_at = ? WHERE uid = ?", (woken_at, idle_at, uid)
            )

    async def save_failure(self, uid: str, revision: int | None, error: str = "") -> None:
        """The revision of this incarnation that failed to start, and why (None: no failure
        stands); a no-op for a deleted incarnation."""
        async with self._transaction():
            if revision is None:
                await self._db.execute("DELETE FROM endpoint_failures WHERE uid = ?", (uid,))
                return
            await self._db.execute(
                "INSERT INTO endpoint_failures (uid, revision, error) SELECT uid, ?, ? FROM endpoints WHERE uid = ? "
                "ON CONFLICT (uid) DO UPDATE SET revision = excluded.revision, error = excluded.error",
                (revision, error[:FAILURE_MAX_CHARS], uid),
            )

    async def failures(self) -> dict[str, tuple[int, str]]:
        """Every standing failure: uid -> (revision, error)."""
        rows = await self._all("SELECT uid, revision, error FROM endpoint_failures")
        return {row["uid"]: (row["revision"], row["error"]) for row in rows}

    async def delete_endpoint(self, namespace: str, name: str) -> None:
        async with self._transaction():
            row = await self._one("DELETE FROM endpoints WHERE namespace = ? AND name = ? RETURNING 1", namespace, name)
        if row is None:
            raise NotFound(f"endpoint {namespace}/{name} does not exist")

    # --- quotas --------------------------------------------------------------------------------

    async def get_quota(self, namespace: str) -> Quota | None:
        """The namespace's quota, or None when it has none (nothing limited)."""
        row = await self._one("SELECT * FROM quotas WHERE namespace = ?", namespace)
        return None if row is None else _quota(row)

    async def set_quota(self, namespace: str, quota: Quota) -> None:
        """Set (or replace) the namespace's quota, every limit at once."""
        async with self._transaction():
            await self._db.execute(
                "INSERT INTO quotas (namespace, gpus, cpus, memory_bytes, replicas, endpoints, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace) DO UPDATE SET gpus = excluded.gpus, "
                "cpus = excluded.cpus, memory_bytes = excluded.memory_bytes, replicas = excluded.replicas, "
                "endpoints = excluded.endpoints, updated_at = excluded.updated_at",
                (namespace, quota.gpus, quota.cpus, quota.memory_bytes, quota.replicas, quota.endpoints, self._stamp()),
            )

    async def unset_quota(self, namespace: str) -> None:
        """Remove the namespace's quota (NotFound when it has none)."""
        async with self._transaction():
            row = await self._one("DELETE FROM quotas WHERE namespace = ? RETURNING 1", namespace)
        if row is None:
            raise NotFound(f"namespace {namespace} has no quota")

    async def list_quotas(self) -> dict[str, Quota]:
        """Every namespace's quota, by namespace."""
        rows = await self._all("SELECT * FROM quotas ORDER BY namespace")
        return {row["namespace"]: _quota(row) for row in rows}

    async def count_endpoints(self, namespace: str) -> int:
        """How many endpoints the namespace has (in any state: each exists)."""
        (count,) = await self._row("SELECT count(*) FROM endpoints WHERE namespace = ?", namespace)
        return count

    # --- audit ---------------------------------------------------------------------------------

    async def record_audit(
        self, actor: str, action: str, namespace: str, name: str, details: dict[str, Any], source_ip: str, request_id: str
    ) -> AuditEntry:
        async with self._transaction():
            row = await self._row(
                "INSERT INTO audit (at, actor, action, namespace, name, details, source_ip, request_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                self._stamp(), actor, action, namespace, name, json.dumps(details, sort_keys=True), source_ip, request_id,
            )
        return _audit(row)

    async def list_audit(
        self, namespace: str | None = None, limit: int = 100, *, endpoint: str | None = None,
        action: str | None = None, since: datetime | None = None, before: int | None = None,
    ) -> list[AuditEntry]:
        """The latest entries first, optionally of one namespace, endpoint or action, at or after
        `since`, and older than the entry `before` (a cursor: the last id of the previous page)."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("namespace", namespace), ("name", endpoint), ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("at >= ?")
            args.append(wire_time(since))
        if before is not None:
            where.append("id < ?")
            args.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(f"SELECT * FROM audit{clause} ORDER BY id DESC LIMIT ?", *args, limit)
        return [_audit(row) for row in rows]

    # --- rate limits ---------------------------------------------------------------------------

    async def set_rate_limit(self, namespace: str, override: Override) -> None:
        async with self._transaction():
            await self._db.execute(
                "INSERT INTO rate_limits (namespace, rpm, concurrent, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (namespace) DO UPDATE SET rpm = excluded.rpm, concurrent = excluded.concurrent, "
                "updated_at = excluded.updated_at",
                (namespace, override.rpm, override.concurrent, self._stamp()),
            )

    async def delete_rate_limit(self, namespace: str) -> bool:
        """Whether there was one to delete."""
        async with self._transaction():
            row = await self._one("DELETE FROM rate_limits WHERE namespace = ? RETURNING 1", namespace)
        return row is not None

    async def rate_limits(self) -> dict[str, Override]:
        rows = await self._all("SELECT namespace, rpm, concurrent FROM rate_limits")
        return {row["namespace"]: Override(row["rpm"], row["concurrent"]) for row in rows}

    # --- events and replica timelines ----------------------------------------------------------

    async def write_journal(
        self, events: Iterable[Event], replicas: Iterable[tuple[str, dict[str, Any]]], forget: Iterable[str]
    ) -> None:
        """In one transaction: append events (each gets the next id, its cursor), save replica
        records (`(uid, replicas.to_json(record))`), drop what is kept of the `forget` uids, and
        hold each endpoint touched to the bounds (events.PER_ENDPOINT and KEEP_S;
        replicas.MAX_STOPPED and KEEP_STOPPED_S)."""
        touched: set[str] = set()
        async with self._transaction():
            for e in events:
                await self._db.execute(
                    "INSERT INTO events (uid, at, kind, reason, replica, inputs) VALUES (?, ?, ?, ?, ?, ?)",
                    (e.endpoint, e.at, e.kind, e.reason, e.replica, json.dumps(e.inputs, sort_keys=True, default=str)),
                )
                touched.add(e.endpoint)
            for uid, record in replicas:
                await self._db.execute(
                    "INSERT INTO replicas (uid, id, stopped_at, record) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (uid, id) DO UPDATE SET stopped_at = excluded.stopped_at, record = excluded.record",
                    (uid, record["id"], record["stopped_at"], json.dumps(record)),
                )
                touched.add(uid)
            for uid in forget:
                await self._db.execute("DELETE FROM events WHERE uid = ?", (uid,))
                await self._db.execute("DELETE FROM replicas WHERE uid = ?", (uid,))
                touched.discard(uid)
            for uid in touched:
                await self._prune_journal(uid)
            await self._age_journal()

    async def _prune_journal(self, uid: str) -> None:
        await self._db.execute(
            "DELETE FROM events WHERE uid = ? AND id <= "
            "(SELECT id FROM events WHERE uid = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (uid, uid, events_mod.PER_ENDPOINT),
        )
        await self._db.execute(
            "DELETE FROM replicas WHERE uid = ? AND stopped_at IS NOT NULL AND id IN "
            "(SELECT id FROM replicas WHERE uid = ? AND stopped_at IS NOT NULL ORDER BY stopped_at DESC LIMIT -1 OFFSET ?)",
            (uid, uid, replicas_mod.MAX_STOPPED),
        )

    async def _age_journal(self) -> None:
        """What outlived its time goes, of every endpoint (an index finds it: cheap when none)."""
        now = self._now().timestamp()
        await self._db.execute("DELETE FROM events WHERE at < ?", (now - events_mod.KEEP_S,))
        await self._db.execute("DELETE FROM replicas WHERE stopped_at < ?", (now - replicas_mod.KEEP_STOPPED_S,))

    async def list_events(self, uid: str, since: int = 0, limit: int = 100) -> list[Event]:
        """The endpoint's events after the id `since`, oldest first, at most the latest `limit`."""
        rows = await self._all(
            "SELECT * FROM (SELECT * FROM events WHERE uid = ? AND id > ? ORDER BY id DESC LIMIT ?) ORDER BY id",
            uid, since, max(limit, 0),
        )
        return [Event(r["id"], r["at"], r["uid"], r["kind"], r["reason"], r["replica"], json.loads(r["inputs"]))
                for r in rows]

    async def load_replicas(self) -> dict[str, list[dict[str, Any]]]:
        """What was kept of each endpoint's replicas (as `replicas.to_json` wrote them), after
        dropping what belongs to no endpoint any more and what outlived the bounds."""
        uids = [row["uid"] for row in await self._all("SELECT uid FROM endpoints")]
        async with self._transaction():
            await self._db.execute("DELETE FROM events WHERE uid NOT IN (SELECT uid FROM endpoints)")
            await self._db.execute("DELETE FROM replicas WHERE uid NOT IN (SELECT uid FROM endpoints)")
            for uid in uids:
                await self._prune_journal(uid)
            await self._age_journal()
        found: dict[str, list[dict[str, Any]]] = {}
        for row in await self._all("SELECT uid, record FROM replicas ORDER BY rowid"):
            found.setdefault(row["uid"], []).append(json.loads(row["record"]))
        return found


    # --- usage ---------------------------------------------------------------------------------

    async def write_usage(
        self, replicas: Iterable[IntervalReplicas], traffic: Iterable[IntervalTraffic], metered: Iterable[Metered],
        forget: Iterable[str] = (), *, before: float | None = None,
    ) -> None:
        """In one transaction: add the intervals' rows (to what an interval already has: a clean
        stop wrote part of it), save what the meter keeps of each replica, drop the `forget`
        replicas' and, with `before`, every row of an interval that started before it (retention)."""
        async with self._transaction():
            await self._db.executemany(
                "INSERT INTO usage_replicas (namespace, endpoint, start, accelerator, instance_type, instance_size, seconds) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, endpoint, start, accelerator, instance_type, instance_size) "
                "DO UPDATE SET seconds = seconds + excluded.seconds",
                [(r.namespace, r.endpoint, r.start, r.hardware.accelerator, r.hardware.instance_type,
                  r.hardware.instance_size, r.seconds) for r in replicas],
            )
            await self._db.executemany(
                "INSERT INTO usage_traffic (namespace, endpoint, start, requests, bytes_in, bytes_out, tokens_in, tokens_out) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, endpoint, start) DO UPDATE SET "
                "requests = requests + excluded.requests, bytes_in = bytes_in + excluded.bytes_in, "
                "bytes_out = bytes_out + excluded.bytes_out, "
                "tokens_in = CASE WHEN tokens_in IS NULL THEN excluded.tokens_in "
                "ELSE tokens_in + COALESCE(excluded.tokens_in, 0) END, "
                "tokens_out = CASE WHEN tokens_out IS NULL THEN excluded.tokens_out "
                "ELSE tokens_out + COALESCE(excluded.tokens_out, 0) END",
                [(t.namespace, t.endpoint, t.start, t.requests, t.bytes_in, t.bytes_out, t.tokens_in, t.tokens_out)
                 for t in traffic],
            )
            await self._db.executemany(
                "INSERT OR REPLACE INTO usage_meter (replica, namespace, endpoint, accelerator, instance_type, "
                "instance_size, counted_to, tokens_in, tokens_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(m.replica, m.namespace, m.endpoint, m.hardware.accelerator, m.hardware.instance_type,
                  m.hardware.instance_size, m.counted_to, m.tokens_in, m.tokens_out) for m in metered],
            )
            await self._db.executemany("DELETE FROM usage_meter WHERE replica = ?", [(r,) for r in forget])
            if before is not None:
                await self._db.execute("DELETE FROM usage_replicas WHERE start < ?", (before,))
                await self._db.execute("DELETE FROM usage_traffic WHERE start < ?", (before,))

    async def metered(self) -> list[Metered]:
        """What the meter kept of each replica (read at its start)."""
        return [
            Metered(r["replica"], r["namespace"], r["endpoint"],
                    Hardware(r["accelerator"], r["instance_type"], r["instance_size"]),
                    r["counted_to"], r["tokens_in"], r["tokens_out"])
            for r in await self._all("SELECT * FROM usage_meter ORDER BY replica")
        ]

    async def usage(self, namespace: str | None, buckets: Buckets) -> tuple[list[ReplicaRow], list[TrafficRow]]:
        """The usage of one namespace (None: every one) summed per endpoint and bucket (and
        hardware): each interval in the bucket its start falls in."""
        where = "start >= ? AND start < ?" + ("" if namespace is None else " AND namespace = ?")
        args: list[Any] = [buckets.start, buckets.step, buckets.start, buckets.end]
        if namespace is not None:
            args.append(namespace)
        bucket = f"MIN(CAST((start - ?) / ? AS INTEGER), {buckets.count - 1}) AS bucket"
        replicas = [
            ReplicaRow(r["namespace"], r["endpoint"], r["bucket"],
                       Hardware(r["accelerator"], r["instance_type"], r["instance_size"]), r["seconds"])
            for r in await self._all(
                f"SELECT namespace, endpoint, {bucket}, accelerator, instance_type, instance_size, SUM(seconds) AS seconds "
                f"FROM usage_replicas WHERE {where} "
                "GROUP BY namespace, endpoint, bucket, accelerator, instance_type, instance_size", *args)
        ]
        traffic = [
            TrafficRow(r["namespace"], r["endpoint"], r["bucket"], r["requests"], r["bytes_in"], r["bytes_out"],
                       r["tokens_in"], r["tokens_out"])
            for r in await self._all(
                f"SELECT namespace, endpoint, {bucket}, SUM(requests) AS requests, SUM(bytes_in) AS bytes_in, "
                "SUM(bytes_out) AS bytes_out, SUM(tokens_in) AS tokens_in, SUM(tokens_out) AS tokens_out "
                f"FROM usage_traffic WHERE {where} GROUP BY namespace, endpoint, bucket", *args)
        ]
        return replicas, traffic


async def _journal_mode_wal(db: aiosqlite.Connection) -> str:
    """`PRAGMA journal_mode = WAL`, the mode it left. Switching a new file to WAL takes an exclusive
    lock without SQLite's busy handler: when other processes open the same new file at the same
    moment, it answers "database is locked" at once; try again for up to the busy timeout."""
    give_up = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            async with db.execute("PRAGMA journal_mode = WAL") as cursor:
                row = await cursor.fetchone()
            assert row is not None  # a PRAGMA that sets a mode answers it
            (mode,) = row
            return mode
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= give_up:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.2)
