"""The persisted analytics history: one row per endpoint incarnation (uid) and 5-minute step, in
SQLite, in a file of its own (`DATA_DIR/analytics.db`, 0600, WAL) so that its writes never queue
behind the store's and its size never counts against it.

Each row is an `Aggregate` as JSON, merged into what is there (a restart writes the part of a step
it saw; the next process adds the rest). Bounded twice: rows older than the retention go, and
beyond `max_rows` the oldest go first. Only the analytics sampler writes; reads are queries.

Errors:
    HistoryError     the file cannot be used (schema newer than this endpointd, no WAL)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from autoscaler.observe.analytics_series import Aggregate
from engines.errors import EndpointdError

FILE = "analytics.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000  # only this process writes; a long wait means the disk is stuck
SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    uid TEXT NOT NULL,
    t INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (uid, t)
);
CREATE INDEX IF NOT EXISTS steps_by_t ON steps (t);
"""


class HistoryError(EndpointdError):
    pass


async def _value(db: aiosqlite.Connection, sql: str) -> Any:
    """The one value of a statement that always answers one row: a PRAGMA, a count."""
    async with db.execute(sql) as cursor:
        row = await cursor.fetchone()
    assert row is not None, sql
    return row[0]


class History:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: Path | str) -> History:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 before SQLite opens it: its WAL and shared-memory files take the database's mode.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = await _value(db, "PRAGMA journal_mode = WAL")
            if mode != "wal":
                raise HistoryError(f"{path}: SQLite cannot use WAL there (journal mode {mode}); put the data directory on a local filesystem")
            version = await _value(db, "PRAGMA user_version")
            if version > SCHEMA_VERSION:
                raise HistoryError(f"{path} has analytics schema version {version}, newer than this endpointd knows "
                                   f"({SCHEMA_VERSION}); upgrade endpointd or remove the file (it holds only history)")
            await db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, SCHEMA.split(";")):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    async def add(self, rows: Iterable[tuple[str, int, Aggregate]]) -> None:
        """Merge each (uid, step start, aggregate) into its row, in one transaction."""
        rows = list(rows)
        if not rows:
            return
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            for uid, t, agg in rows:
                async with self._db.execute("SELECT data FROM steps WHERE uid = ? AND t = ?", (uid, t)) as cursor:
                    found = await cursor.fetchone()
                if found is not None:
                    merged = Aggregate.from_json(json.loads(found[0]))
                    merged.merge(agg)
                    agg = merged
                await self._db.execute(
                    "INSERT OR REPLACE INTO steps (uid, t, data) VALUES (?, ?, ?)",
                    (uid, t, json.dumps(agg.to_json(), separators=(",", ":"))),
                )
        except BaseException:
            await self._db.rollback()
            raise
        await self._db.commit()

    async def read(self, uid: str, start: int, end: int) -> list[tuple[int, Aggregate]]:
        """The rows of one endpoint with start <= t < end, oldest first."""
        async with self._db.execute(
            "SELECT t, data FROM steps WHERE uid = ? AND t >= ? AND t < ? ORDER BY t", (uid, start, end)
        ) as cursor:
            return [(t, Aggregate.from_json(json.loads(data))) for t, data in await cursor.fetchall()]

    async def forget(self, uid: str) -> None:
        await self._db.execute("DELETE FROM steps WHERE uid = ?", (uid,))
        await self._db.commit()

    async def prune(self, older_than: int, max_rows: int) -> int:
        """Drop rows before `older_than`, then the oldest beyond `max_rows`; how many went."""
        dropped = (await self._db.execute("DELETE FROM steps WHERE t < ?", (older_than,))).rowcount
        rows = await _value(self._db, "SELECT count(*) FROM steps")
        if rows > max_rows:
            dropped += (await self._db.execute(
                "DELETE FROM steps WHERE rowid IN (SELECT rowid FROM steps ORDER BY t LIMIT ?)", (rows - max_rows,)
            )).rowcount
        await self._db.commit()
        return max(dropped, 0)

    async def rows(self) -> int:
        rows: int = await _value(self._db, "SELECT count(*) FROM steps")
        return rows
