"""logs.db: the runtime logs' SQLite file, a file of its own (0600, WAL) so that a flood of lines
never waits on, nor slows, the main store's writes; one writer thread, one reader thread.

It holds each endpoint incarnation's lines (a stream, with its size), the collector's per-container
read cursors, written in the same transaction as the lines they cover, and the incarnations deleted
while containers of theirs may still run. Each endpoint keeps `log_max_bytes_per_endpoint` bytes
(the oldest lines go, at every write); lines past `log_retention_days` go by `prune_age`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoscaler.observe.log_line import LogLine
from autoscaler.store import datadir

# How much an over-size endpoint is pruned to: a tenth of headroom, so that a full endpoint is
# pruned once per tenth of growth, not at every write.
PRUNE_TO_FRACTION = 0.9
# Bytes a stored line costs beyond its text and replica id (row id, time, stream, index entries):
# an estimate that makes the size bound track the file's size, not only the text.
ROW_OVERHEAD_BYTES = 32
BUSY_TIMEOUT_MS = 5000
WAL_LIMIT_BYTES = 64 << 20  # the WAL is truncated to this after a checkpoint

# Append only: a database at version N runs MIGRATIONS[N:] on open. Never edit a released entry.
MIGRATIONS = [
    # 1: lines per stream (an endpoint incarnation), its size, the per-container read cursors, and
    # the incarnations deleted while containers of theirs may still run.
    """
    CREATE TABLE streams (id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, bytes INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE lines (
        id INTEGER PRIMARY KEY,
        stream INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        replica TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX lines_by_time ON lines (stream, at_ms);
    CREATE INDEX lines_by_replica ON lines (stream, replica, at_ms);
    CREATE TABLE cursors (
        container TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        replica TEXT NOT NULL,
        consumed INTEGER NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE TABLE forgotten (uid TEXT PRIMARY KEY);
    """,
]
_ROW_BYTES = f"length(CAST(text AS BLOB)) + length(replica) + {ROW_OVERHEAD_BYTES}"


@dataclass(frozen=True, slots=True)
class Cursor:
    uid: str
    replica: str
    consumed: int  # lines of the container's log read so far (stored, dropped, or skipped)
    at_ms: int = 0  # when the last of them was read (unix ms)


@dataclass(frozen=True)
class StoredState:
    next_id: int
    last_at_ms: int
    cursors: dict[str, Cursor]  # by container id
    forgotten: frozenset[str]


def row_bytes(replica: str, text: str) -> int:
    """What a line counts against its endpoint's size bound (as the store's SQL counts it)."""
    return len(text.encode()) + len(replica) + ROW_OVERHEAD_BYTES


class LogStore:
    """logs.db. Writes go through one thread and one connection, in order (a forget after a batch
    deletes that batch too); reads through another, so that the API's reads never wait behind a
    large write (WAL: readers see the last commit)."""

    def __init__(self, path: Path, max_bytes_per_endpoint: int) -> None:
        self.path = path
        self.max_bytes = max_bytes_per_endpoint
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="endpointd-logs-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="endpointd-logs-read")
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._streams: dict[str, int] = {}  # uid -> stream id; writer thread only

    @classmethod
    async def open(cls, path: Path, *, max_bytes_per_endpoint: int) -> LogStore:
        store = cls(Path(path), max_bytes_per_endpoint)
        try:
            await store._write(store._open_writer)
            await store._read(store._open_reader)
        except BaseException:
            await store.close()
            raise
        return store

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    def _writing(self) -> sqlite3.Connection:
        """The writer thread's connection, from `open` to `close`."""
        if self._w is None:
            raise sqlite3.ProgrammingError(f"{self.path}: the log store is not open")
        return self._w

    def _reading(self) -> sqlite3.Connection:
        """The reader thread's connection, from `open` to `close`."""
        if self._r is None:
            raise sqlite3.ProgrammingError(f"{self.path}: the log store is not open")
        return self._r

    # --- writer thread ---

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return con

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        datadir.private_file(self.path)  # 0600 before SQLite opens it: its WAL takes this mode
        con = self._w = self._connect()
        (mode,) = con.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise sqlite3.OperationalError(f"{self.path}: SQLite cannot use WAL there (journal mode {mode})")
        # Logs may lose their last milliseconds on a power cut, never their consistency.
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        # A deleted endpoint's lines are zeroed where that costs no extra I/O.
        con.execute("PRAGMA secure_delete = FAST")
        (version,) = con.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise sqlite3.OperationalError(
                f"{self.path} has schema version {version}, newer than this endpointd knows ({len(MIGRATIONS)})"
            )
        for number in range(version + 1, len(MIGRATIONS) + 1):
            con.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute(f"PRAGMA user_version = {number}")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._streams = dict(con.execute("SELECT uid, id FROM streams"))

    def _open_reader(self) -> None:
        self._r = self._connect()
        self._r.execute("PRAGMA query_only = ON")

    def _stream(self, uid: str) -> int:
        stream = self._streams.get(uid)
        if stream is None:
            (stream,) = self._writing().execute("INSERT INTO streams (uid) VALUES (?) RETURNING id", (uid,)).fetchone()
            self._streams[uid] = stream
        return stream

    def _append(self, rows: list[tuple[int, str, int, str, str]], cursors: dict[str, Cursor], gone: list[str]) -> None:
        con = self._writing()
        con.execute("BEGIN IMMEDIATE")
        try:
            added: dict[int, int] = {}
            values = []
            for line_id, uid, at_ms, replica, text in rows:
                stream = self._stream(uid)
                added[stream] = added.get(stream, 0) + row_bytes(replica, text)
                values.append((line_id, stream, at_ms, replica, text))
            con.executemany("INSERT INTO lines (id, stream, at_ms, replica, text) VALUES (?, ?, ?, ?, ?)", values)
            con.executemany("UPDATE streams SET bytes = bytes + ? WHERE id = ?", [(b, s) for s, b in added.items()])
            self._save_cursors(cursors)
            con.executemany("DELETE FROM cursors WHERE container = ?", [(cid,) for cid in gone])
            for stream in added:
                self._bound_size(stream)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _save_cursors(self, cursors: dict[str, Cursor]) -> None:
        self._writing().executemany(
            "INSERT INTO cursors (container, uid, replica, consumed, at_ms) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (container) DO UPDATE SET consumed = excluded.consumed, at_ms = excluded.at_ms",
            [(cid, c.uid, c.replica, c.consumed, c.at_ms) for cid, c in cursors.items()],
        )

    def _bound_size(self, stream: int) -> None:
        """Drop the stream's oldest lines while it is over its size bound (to PRUNE_TO_FRACTION of it)."""
        con = self._writing()
        (size,) = con.execute("SELECT bytes FROM streams WHERE id = ?", (stream,)).fetchone()
        if size <= self.max_bytes:
            return
        excess = size - int(self.max_bytes * PRUNE_TO_FRACTION)
        freed, last = 0, None
        # Oldest first, read lazily: the scan stops at the line that frees enough.
        for line_id, at_ms, size_of in con.execute(
            f"SELECT id, at_ms, {_ROW_BYTES} FROM lines WHERE stream = ? ORDER BY at_ms, id", (stream,)
        ):
            freed += size_of
            last = (at_ms, line_id)
            if freed >= excess:
                break
        if last is not None:
            con.execute(
                "DELETE FROM lines WHERE stream = ? AND (at_ms < ? OR (at_ms = ? AND id <= ?))",
                (stream, last[0], last[0], last[1]),
            )
        con.execute("UPDATE streams SET bytes = ? WHERE id = ?", (max(size - freed, 0), stream))

    def _prune_age(self, cutoff_ms: int) -> int:
        con = self._writing()
        dropped = 0
        for stream in list(self._streams.values()):
            con.execute("BEGIN IMMEDIATE")
            try:
                count, size = con.execute(
                    f"SELECT count(*), coalesce(sum({_ROW_BYTES}), 0) FROM lines WHERE stream = ? AND at_ms < ?",
                    (stream, cutoff_ms),
                ).fetchone()
                if count:
                    con.execute("DELETE FROM lines WHERE stream = ? AND at_ms < ?", (stream, cutoff_ms))
                    con.execute("UPDATE streams SET bytes = max(bytes - ?, 0) WHERE id = ?", (size, stream))
                # Deleted incarnations are remembered only while a container of theirs is known.
                con.execute("DELETE FROM forgotten WHERE uid NOT IN (SELECT uid FROM cursors)")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            dropped += count
        return dropped

    def _forget(self, uid: str, cursors: dict[str, Cursor]) -> None:
        con = self._writing()
        con.execute("BEGIN IMMEDIATE")
        try:
            stream = self._streams.pop(uid, None)
            if stream is not None:
                con.execute("DELETE FROM lines WHERE stream = ?", (stream,))
                con.execute("DELETE FROM streams WHERE id = ?", (stream,))
            # Its containers' cursors, with the mark: a restarted endpointd does not read them again.
            self._save_cursors(cursors)
            con.execute("INSERT OR IGNORE INTO forgotten (uid) VALUES (?)", (uid,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _state(self) -> StoredState:
        con = self._writing()
        next_id, last_at = con.execute("SELECT coalesce(max(id), 0) + 1, coalesce(max(at_ms), 0) FROM lines").fetchone()
        cursors = {row[0]: Cursor(*row[1:])
                   for row in con.execute("SELECT container, uid, replica, consumed, at_ms FROM cursors")}
        forgotten = frozenset(uid for (uid,) in con.execute("SELECT uid FROM forgotten"))
        return StoredState(next_id, last_at, cursors, forgotten)

    def _size(self, uid: str) -> int:
        row = self._writing().execute("SELECT bytes FROM streams WHERE uid = ?", (uid,)).fetchone()
        return row[0] if row else 0

    # --- reader thread ---

    def _select(self, uid: str, replica: str | None, since_ms: int, until_ms: int, after: tuple[int, int] | None,
                limit: int) -> list[LogLine]:
        where = ["stream = (SELECT id FROM streams WHERE uid = ?)", "at_ms >= ?", "at_ms <= ?"]
        args: list[Any] = [uid, since_ms, until_ms]
        if replica is not None:
            where.append("replica = ?")
            args.append(replica)
        if after is not None:  # (at_ms, id) of the last line seen: ids grow with at_ms
            where += ["at_ms >= ?", "id > ?"]
            args += list(after)
            order = "at_ms, id"
        else:
            order = "at_ms DESC, id DESC"
        rows = self._reading().execute(
            f"SELECT id, at_ms, replica, text FROM lines WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?",
            (*args, limit),
        ).fetchall()
        lines = [LogLine(*row) for row in rows]
        return lines if after is not None else lines[::-1]

    # --- the coroutine API ---

    async def append(self, rows: list[tuple[int, str, int, str, str]], cursors: dict[str, Cursor], gone: list[str]) -> None:
        """Rows (id, uid, at_ms, replica, text), the cursors they advance and the cursors of
        containers that are gone, in one transaction; then each endpoint's size bound."""
        await self._write(self._append, rows, cursors, gone)

    async def latest(self, uid: str, *, replica: str | None, since_ms: int, until_ms: int, limit: int) -> list[LogLine]:
        """The latest `limit` matching lines, oldest first."""
        return await self._read(self._select, uid, replica, since_ms, until_ms, None, limit)

    async def after(self, uid: str, last: tuple[int, int], *, replica: str | None, since_ms: int, until_ms: int,
                    limit: int) -> list[LogLine]:
        """The first `limit` matching lines after `last` (at_ms, id), oldest first."""
        return await self._read(self._select, uid, replica, since_ms, until_ms, last, limit)

    async def forget(self, uid: str, cursors: dict[str, Cursor]) -> None:
        """Delete the incarnation's lines; keep its containers' cursors, marked as forgotten."""
        await self._write(self._forget, uid, cursors)

    async def prune_age(self, cutoff_ms: int) -> int:
        return await self._write(self._prune_age, cutoff_ms)

    async def state(self) -> StoredState:
        return await self._write(self._state)

    async def size(self, uid: str) -> int:
        """The bytes the endpoint's lines count against its bound."""
        return await self._write(self._size, uid)

    async def close(self) -> None:
        for executor, attr in ((self._writer, "_w"), (self._reader, "_r")):
            con = getattr(self, attr)
            if con is not None:
                await asyncio.get_running_loop().run_in_executor(executor, con.close)
                setattr(self, attr, None)
            executor.shutdown(wait=False)

