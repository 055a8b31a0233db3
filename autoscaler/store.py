"""The durable desired state: users, orgs, tokens, endpoints and the audit log, in SQLite.

WAL mode and a busy timeout let the CLI (`endpointd tokens create`) write while `endpointd serve`
runs. The schema is versioned with `PRAGMA user_version`; each migration runs once, in order.

Errors, one root:
    StoreError
      NotFound      no such user, token or endpoint
      Conflict      the name is taken
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

ADMIN = "admin"
TOKEN_PREFIX = "epd_"
# Seconds a writer waits for another process's transaction before failing.
BUSY_TIMEOUT_MS = 5000

MIGRATIONS = [
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
]


class StoreError(Exception):
    pass


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings, so a fast unsalted hash is enough: there is nothing to
    # brute-force. Lookups go by hash, so no comparison ever runs on the plaintext.
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Identity:
    user: str
    orgs: frozenset[str]
    is_admin: bool


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user: str
    label: str | None
    created_at: str
    revoked_at: str | None


@dataclass(frozen=True)
class EndpointRecord:
    namespace: str
    name: str
    spec: dict[str, Any]
    state: str
    message: str
    revision: int
    paused: bool
    target_replicas: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    at: str
    actor: str
    action: str
    namespace: str
    name: str
    details: dict[str, Any]
    source_ip: str
    request_id: str


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Store:
    def __init__(self, db: aiosqlite.Connection, now: Callable[[], datetime]) -> None:
        self._db = db
        self._now = now

    @classmethod
    async def open(cls, path: Path | str, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Store:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        db.row_factory = aiosqlite.Row
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA foreign_keys = ON")
        store = cls(db, now)
        await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                async with self._db.execute("PRAGMA user_version") as cursor:
                    (current,) = await cursor.fetchone()
                if current < number:  # another process may have migrated meanwhile
                    for statement in filter(str.strip, script.split(";")):
                        await self._db.execute(statement)
                    await self._db.execute(f"PRAGMA user_version = {number}")
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        await self._db.close()

    def _stamp(self) -> str:
        return _iso(self._now())

    async def _one(self, sql: str, *args: Any) -> aiosqlite.Row | None:
        async with self._db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def _all(self, sql: str, *args: Any) -> list[aiosqlite.Row]:
        async with self._db.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    # --- users and orgs ----------------------------------------------------------------------

    async def namespace_kind(self, name: str) -> str | None:
        if await self._one("SELECT 1 FROM users WHERE name = ?", name):
            return "user"
        if await self._one("SELECT 1 FROM orgs WHERE name = ?", name):
            return "org"
        return None

    async def add_user(self, name: str, orgs: tuple[str, ...] | list[str] = (), *, is_admin: bool = False) -> None:
        """Create the user (or add memberships to an existing one), creating missing orgs."""
        if await self.namespace_kind(name) == "org":
            raise Conflict(f"{name} is already an org; users and orgs share one namespace, choose another name")
        for org in orgs:
            if await self.namespace_kind(org) == "user":
                raise Conflict(f"{org} is already a user and cannot be an org; choose another org name")
        now = self._stamp()
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute(
                "INSERT INTO users (name, is_admin, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET is_admin = MAX(is_admin, excluded.is_admin)",
                (name, int(is_admin), now),
            )
            for org in orgs:
                await self._db.execute("INSERT OR IGNORE INTO orgs (name, created_at) VALUES (?, ?)", (org, now))
                await self._db.execute("INSERT OR IGNORE INTO memberships (user, org) VALUES (?, ?)", (name, org))
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    async def user_orgs(self, name: str) -> frozenset[str]:
        return frozenset(r["org"] for r in await self._all("SELECT org FROM memberships WHERE user = ?", name))

    # --- tokens --------------------------------------------------------------------------------

    async def create_token(self, user: str, label: str | None = None, *, token: str | None = None, from_env: bool = False) -> tuple[str, TokenInfo]:
        if not await self._one("SELECT 1 FROM users WHERE name = ?", user):
            raise NotFound(f"user {user} does not exist; add it first with `endpointd users add {user}`")
        plaintext = token or new_token()
        token_id = secrets.token_hex(4)
        now = self._stamp()
        await self._db.execute(
            "INSERT INTO tokens (id, user, label, hash, from_env, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (token_id, user, label, hash_token(plaintext), int(from_env), now),
        )
        return plaintext, TokenInfo(token_id, user, label, now, None)

    async def verify_token(self, token: str) -> Identity | None:
        row = await self._one(
            "SELECT u.name, u.is_admin FROM tokens t JOIN users u ON u.name = t.user "
            "WHERE t.hash = ? AND t.revoked_at IS NULL",
            hash_token(token),
        )
        if row is None:
            return None
        return Identity(row["name"], await self.user_orgs(row["name"]), bool(row["is_admin"]))

    async def revoke_token(self, token_id_or_token: str) -> TokenInfo:
        row = await self._one(
            "SELECT * FROM tokens WHERE id = ? OR hash = ?", token_id_or_token, hash_token(token_id_or_token)
        )
        if row is None:
            raise NotFound("no such token; `endpointd tokens list USER` shows the ids")
        await self._db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (self._stamp(), row["id"]))
        return TokenInfo(row["id"], row["user"], row["label"], row["created_at"], self._stamp())

    async def list_tokens(self, user: str) -> list[TokenInfo]:
        rows = await self._all("SELECT * FROM tokens WHERE user = ? ORDER BY created_at", user)
        return [TokenInfo(r["id"], r["user"], r["label"], r["created_at"], r["revoked_at"]) for r in rows]

    async def ensure_admin(self, env_token: str | None) -> str | None:
        """The admin user and a live token. With `env_token` (ENDPOINTD_ADMIN_TOKEN), that token,
        revoking a different one that came from the environment before. Without, a generated
        token if admin has none; returned so the caller can hand it over once."""
        await self.add_user(ADMIN, is_admin=True)
        if env_token:
            if await self._one("SELECT 1 FROM tokens WHERE hash = ? AND revoked_at IS NULL", hash_token(env_token)) is None:
                await self._db.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE user = ? AND from_env = 1 AND revoked_at IS NULL",
                    (self._stamp(), ADMIN),
                )
                await self.create_token(ADMIN, "ENDPOINTD_ADMIN_TOKEN", token=env_token, from_env=True)
            return None
        if await self._one("SELECT 1 FROM tokens WHERE user = ? AND revoked_at IS NULL", ADMIN):
            return None
        token, _ = await self.create_token(ADMIN, "bootstrap")
        return token

    # --- endpoints -----------------------------------------------------------------------------

    @staticmethod
    def _record(row: aiosqlite.Row) -> EndpointRecord:
        return EndpointRecord(
            row["namespace"], row["name"], json.loads(row["spec"]), row["state"], row["message"],
            row["revision"], bool(row["paused"]), row["target_replicas"],
            _parse(row["created_at"]), _parse(row["updated_at"]),
        )

    async def create_endpoint(self, namespace: str, name: str, spec: dict[str, Any], *, state: str, target_replicas: int) -> EndpointRecord:
        now = self._stamp()
        try:
            await self._db.execute(
                "INSERT INTO endpoints (namespace, name, spec, state, target_replicas, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (namespace, name, json.dumps(spec), state, target_replicas, now, now),
            )
        except aiosqlite.IntegrityError:
            raise Conflict(f"endpoint {namespace}/{name} already exists; choose another name or update it") from None
        return await self.get_endpoint(namespace, name)

    async def get_endpoint(self, namespace: str, name: str) -> EndpointRecord:
        row = await self._one("SELECT * FROM endpoints WHERE namespace = ? AND name = ?", namespace, name)
        if row is None:
            raise NotFound(f"endpoint {namespace}/{name} does not exist")
        return self._record(row)

    async def list_endpoints(self, namespace: str | None = None) -> list[EndpointRecord]:
        if namespace is None:
            rows = await self._all("SELECT * FROM endpoints ORDER BY namespace, name")
        else:
            rows = await self._all("SELECT * FROM endpoints WHERE namespace = ? ORDER BY name", namespace)
        return [self._record(r) for r in rows]

    async def update_endpoint(
        self,
        namespace: str,
        name: str,
        *,
        spec: dict[str, Any] | None = None,
        state: str | None = None,
        message: str | None = None,
        bump_revision: bool = False,
        target_replicas: int | None = None,
        paused: bool | None = None,
    ) -> EndpointRecord:
        sets, args = ["updated_at = ?"], [self._stamp()]
        for column, value in (("spec", json.dumps(spec) if spec is not None else None), ("state", state),
                              ("message", message), ("target_replicas", target_replicas),
                              ("paused", int(paused) if paused is not None else None)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        if bump_revision:
            sets.append("revision = revision + 1")
        cursor = await self._db.execute(
            f"UPDATE endpoints SET {', '.join(sets)} WHERE namespace = ? AND name = ?", (*args, namespace, name)
        )
        if cursor.rowcount == 0:
            raise NotFound(f"endpoint {namespace}/{name} does not exist")
        return await self.get_endpoint(namespace, name)

    async def delete_endpoint(self, namespace: str, name: str) -> None:
        cursor = await self._db.execute("DELETE FROM endpoints WHERE namespace = ? AND name = ?", (namespace, name))
        if cursor.rowcount == 0:
            raise NotFound(f"endpoint {namespace}/{name} does not exist")

    # --- audit ---------------------------------------------------------------------------------

    async def record_audit(self, actor: str, action: str, namespace: str, name: str, details: dict[str, Any], source_ip: str, request_id: str) -> None:
        await self._db.execute(
            "INSERT INTO audit (at, actor, action, namespace, name, details, source_ip, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self._stamp(), actor, action, namespace, name, json.dumps(details, sort_keys=True), source_ip, request_id),
        )

    async def list_audit(self, namespace: str | None = None, limit: int = 100) -> list[AuditEntry]:
        where, args = ("WHERE namespace = ?", [namespace]) if namespace else ("", [])
        rows = await self._all(f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", *args, limit)
        return [
            AuditEntry(r["at"], r["actor"], r["action"], r["namespace"], r["name"], json.loads(r["details"]), r["source_ip"], r["request_id"])
            for r in rows
        ]
