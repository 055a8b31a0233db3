"""Runtime logs: every replica's stdout and stderr, collected as its container writes them, masked,
kept in SQLite (DATA_DIR/logs.db) after the replica stops, bounded per endpoint, and served to the
API (`query`, `follow`) until the endpoint is deleted (`forget`).

    LogService   start()/close(), tick() (one collection round), query(), follow(), forget()
      Collector  polls `runtime.list()` and follows each container's log from its start (one task
                 per container); a container is bound to its endpoint *incarnation* (uid) when
                 first seen, so a re-created endpoint of the same name never gets its lines
      LogStore   logs.db, a file of its own (0600, WAL) so that a flood of lines never waits on,
                 nor slows, the main store's writes; one writer thread, one reader thread
      Follow     one live follower: the backlog, then new lines, woken on write (no polling)

Resuming after a restart. The `Runtime` seam gives a container's log as lines, without Docker's
timestamps and without `since`, so a restarted endpointd cannot ask for "the lines after time T".
It counts instead: each container's cursor (how many of its lines were consumed) is written in the
same transaction as the lines it covers, and a restarted collector reads the container's log from
its start again and skips that many. No line is stored twice, and none is lost to a crash (lines
not yet written are read again). With Docker's log rotation (json-file `max-file`), lines rotated
away shift the count: lines may then be missed on resume, never duplicated. Times are when the
collector read a line, which is within about a second of its writing for a followed container;
lines written while endpointd was down get the time they were read after the restart.

Bounds, so that a log-spewing engine cannot exhaust the disk or stall the event loop: each line
is cut at `log_max_line_bytes`; each replica may write `log_max_lines_per_s` lines per second
(bursts of twice that pass), beyond which lines are dropped and a note line says how many; each
endpoint keeps `log_retention_days` days and `log_max_bytes_per_endpoint` bytes, whichever is
reached first (the oldest lines go); a follower's queue is bounded (beyond it, it catches up from
the store).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from engines.runtime import (
    EndpointKey,
    ReplicaInfo,
    ReplicaNotFound,
    ReplicaStatus,
    Runtime,
    RuntimeError_,
)
from proxy.core.config import setting

from autoscaler.store import datadir
log = logging.getLogger("endpointd.logs")

LOGS_FILE = "logs.db"
DEFAULT_TAIL = 50  # the reference's Logs tab shows the latest 50 lines
# Read a container's log from its very first line: the Runtime's `tail` counts lines from the end,
# and Docker returns all of them when asked for more than there are.
FROM_START = 1 << 30
# Secret values shorter than this are not masked: replacing every "abc" or "true" would wreck the
# log, and the pattern of what got masked would itself tell the value.
MIN_SECRET_CHARS = 4
MASK = "***"
# Bursts of this many seconds' worth of lines pass the rate bound whole (an engine's start-up
# banner, a traceback).
BURST_S = 2.0
# During a flood, a note of the dropped lines at most this often per replica.
NOTE_EVERY_S = 1.0
# A reader gives the event loop back after this long: a stream that always has data ready (a
# flood) would otherwise keep the loop to itself (reading one line from Docker costs ~30 us).
SLICE_S = 0.002
# While a replica's lines are being dropped, its reader takes at most this share of the loop
# (it sleeps three slices' time after each slice); the rest of the flood waits in Docker's log,
# to be read (and dropped) as the reader catches up.
FLOOD_SHARE = 0.25
# Lines collected within this window share one transaction.
BATCH_WINDOW_S = 0.05
# Lines waiting for the writer; beyond it, followers of containers wait for the write (backpressure
# on the container's log stream, never a loss).
MAX_BUFFERED_LINES = 50_000
# A follower's queue of new lines; beyond it the queue is dropped and the follower reads what it
# missed from the store, in chunks of FOLLOW_CHUNK.
MAX_QUEUED_PER_FOLLOWER = 2_000
FOLLOW_CHUNK = 1_000
# How much an over-size endpoint is pruned to: a tenth of headroom, so that a full endpoint is
# pruned once per tenth of growth, not at every write.
PRUNE_TO_FRACTION = 0.9
# Age pruning runs this often (the API's reads apply the age bound exactly, whenever they run).
PRUNE_INTERVAL_S = 60.0
# Bytes a stored line costs beyond its text and replica id (row id, time, stream, index entries):
# an estimate that makes the size bound track the file's size, not only the text.
ROW_OVERHEAD_BYTES = 32
# How long `capture` (before a container is removed) waits for its log to be read.
CAPTURE_TIMEOUT_S = 1.0
CUT_SUFFIX = "…"
BUSY_TIMEOUT_MS = 5000
WAL_LIMIT_BYTES = 64 << 20  # the WAL is truncated to this after a checkpoint
DAY_S = 86_400.0


@dataclass(frozen=True)
class LogsConfig:
    """The `[logs]` section. Field names carry `log_` because settings share one environment and
    flag namespace (ENDPOINTD_LOG_RETENTION_DAYS, --log-retention-days) with other sections."""

    log_retention_days: float = setting(
        # The reference service keeps an endpoint's logs 30 days.
        30.0, min=0.0001, max=3650.0, help="days a log line is kept (then dropped, oldest first)",
    )
    log_max_bytes_per_endpoint: int = setting(
        # The reference's bound; at ~100 bytes a line that is a million lines per endpoint.
        100_000_000, min=1024, max=1 << 40,
        help="bytes of logs kept per endpoint (its oldest lines are dropped beyond)",
    )
    log_max_line_bytes: int = setting(
        # Longer than any real log line, short of a whole JSON document dumped on one line.
        16_384, min=256, max=1 << 20, help="longest log line stored, in UTF-8 bytes (longer ones are cut)",
    )
    log_max_lines_per_s: float = setting(
        # A busy engine logging each request stays well below; a loop printing as fast as it can
        # (millions of lines a second) is cut to what SQLite writes without a sweat.
        1000.0, min=1.0, max=1_000_000.0,
        help="lines per second each replica may log (bursts of twice that pass); beyond, lines are "
        "dropped and a note says how many",
    )
    log_poll_interval_s: float = setting(
        1.0, min=0.05, max=60.0, help="how often containers are listed, to follow the log of each new one",
    )
    log_max_followers_per_endpoint: int = setting(
        16, min=1, max=10_000, help="live followers (GET .../logs/sse) per endpoint; beyond, 429",
    )
    log_keepalive_s: float = setting(
        # Under the 30-60 s idle timeouts of common reverse proxies.
        15.0, min=0.1, max=300.0, help="seconds between keep-alive comments on an idle log stream",
    )


@dataclass(frozen=True, slots=True)
class LogLine:
    id: int  # increasing in collection order, as `at_ms` is: (at_ms, id) is the order of lines
    at_ms: int  # when it was collected, unix milliseconds (UTC)
    replica: str
    text: str


class FollowersFull(Exception):
    """An endpoint already has as many live followers as allowed."""

    def __init__(self, uid: str, limit: int) -> None:
        super().__init__(f"this endpoint's logs already have {limit} live followers, the most allowed; close one first")
        self.uid = uid
        self.limit = limit


def format_time(at_ms: int) -> str:
    """RFC 3339, UTC, milliseconds: `2025-01-02T03:04:05.678Z` (fixed width)."""
    seconds, ms = divmod(at_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def format_line(line: LogLine, max_length: int | None = None) -> str:
    """`{time} {replica} {text}`, the text cut to `max_length` characters when given."""
    text = line.text if max_length is None else line.text[:max_length]
    return f"{format_time(line.at_ms)} {line.replica} {text}"


# --- cleaning and masking ------------------------------------------------------------------------


def clean(raw: str, max_bytes: int) -> str:
    """One stored line: what a terminal would show of it (the part after the last carriage return:
    a progress bar's last state), without NULs, valid UTF-8, cut at `max_bytes` bytes."""
    line = raw.rstrip("\r")
    if "\r" in line:
        line = line.rsplit("\r", 1)[1]
    if "\x00" in line:
        line = line.replace("\x00", "\ufffd")
    try:
        data = line.encode()
    except UnicodeEncodeError:  # lone surrogates from a lenient decoder: SQLite refuses them
        data = line.encode("utf-8", "replace")
        line = data.decode()
    if len(data) > max_bytes:
        room = max_bytes - len(CUT_SUFFIX.encode())
        line = data[:room].decode("utf-8", "ignore") + CUT_SUFFIX
    return line


def secret_forms(value: str) -> set[str]:
    """The ways a secret's value shows up in a log: as is, percent-encoded (a URL, a query string)
    and JSON-escaped (a request body echoed back)."""
    if len(value) < MIN_SECRET_CHARS:
        return set()
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), json.dumps(value)[1:-1]}


class Masker:
    """Replaces every secret value (in each of its forms) by ***. Longer values first, so that a
    secret containing another is masked whole."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {form for value in secrets if isinstance(value, str) for form in secret_forms(value)}
        self.secrets = frozenset(forms)
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, line: str) -> str:
        return self._pattern.sub(MASK, line) if self._pattern is not None else line


# --- the store ----------------------------------------------------------------------------------

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
            (stream,) = self._w.execute("INSERT INTO streams (uid) VALUES (?) RETURNING id", (uid,)).fetchone()
            self._streams[uid] = stream
        return stream

    def _append(self, rows: list[tuple[int, str, int, str, str]], cursors: dict[str, Cursor], gone: list[str]) -> None:
        con = self._w
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
        self._w.executemany(
            "INSERT INTO cursors (container, uid, replica, consumed, at_ms) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (container) DO UPDATE SET consumed = excluded.consumed, at_ms = excluded.at_ms",
            [(cid, c.uid, c.replica, c.consumed, c.at_ms) for cid, c in cursors.items()],
        )

    def _bound_size(self, stream: int) -> None:
        """Drop the stream's oldest lines while it is over its size bound (to PRUNE_TO_FRACTION of it)."""
        con = self._w
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
        con = self._w
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
        con = self._w
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
        con = self._w
        next_id, last_at = con.execute("SELECT coalesce(max(id), 0) + 1, coalesce(max(at_ms), 0) FROM lines").fetchone()
        cursors = {row[0]: Cursor(*row[1:])
                   for row in con.execute("SELECT container, uid, replica, consumed, at_ms FROM cursors")}
        forgotten = frozenset(uid for (uid,) in con.execute("SELECT uid FROM forgotten"))
        return StoredState(next_id, last_at, cursors, forgotten)

    def _size(self, uid: str) -> int:
        row = self._w.execute("SELECT bytes FROM streams WHERE uid = ?", (uid,)).fetchone()
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
        rows = self._r.execute(
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


# --- following one container ---------------------------------------------------------------------


class _Bucket:
    """A token bucket: `rate` lines a second, bursts of BURST_S seconds' worth, plus a first
    `credit` (the lines the replica was allowed to write while nobody read its log)."""

    def __init__(self, rate: float, now: float, credit: float = 0.0) -> None:
        self.rate = rate
        self.capacity = max(rate * BURST_S, 1.0)
        self.tokens = self.capacity + max(credit, 0.0)
        self.at = now

    def take(self, now: float) -> bool:
        if self.tokens < self.capacity:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(eq=False)
class _Tail:
    """The collector's view of one container it follows."""

    info: ReplicaInfo
    uid: str
    skip: int  # lines of its log already consumed before (by an earlier endpointd)
    bucket: _Bucket
    secrets: set[str] = field(default_factory=set)
    masker: Masker = field(default_factory=lambda: Masker(()))
    consumed: int = 0
    dropped: int = 0
    noted_at: float = float("-inf")
    read_one: asyncio.Event = field(default_factory=asyncio.Event)  # a line was read, or the stream ended
    task: asyncio.Task | None = None

    def learn(self, secrets: Iterable[str]) -> None:
        """Add secret values; old ones stay masked (an update's roll: old replicas have old secrets)."""
        new = {s for s in secrets if isinstance(s, str)} - self.secrets
        if new:
            self.secrets |= new
            self.masker = Masker(self.secrets)


# --- following live -------------------------------------------------------------------------------


class Follow:
    """One live follower of an endpoint's logs: an async iterator of the backlog (the latest `tail`
    matching lines), then each new matching line once it is stored, and None after `keepalive_s`
    without a line (a keep-alive for the caller to send). Registered when made (FollowersFull
    beyond the bound); `close()` (or `async with`) unregisters it. Ends when the endpoint is
    forgotten, the service closes, or `until` has passed."""

    def __init__(self, service: LogService, uid: str, *, replica: str | None, tail: int, since_ms: int | None,
                 until_ms: int | None, keepalive_s: float) -> None:
        self._service = service
        self.uid = uid
        self.replica = replica
        self._tail = tail
        self._since_ms = since_ms
        self._until_ms = until_ms
        self._keepalive_s = keepalive_s
        self._queue: deque[LogLine] = deque()
        self._woken = asyncio.Event()
        self._started = False
        self._behind = False  # the queue overflowed: read what was missed from the store
        self._last = (0, 0)  # (at_ms, id) of the last line handed out
        self.ended = False

    def push(self, lines: Iterable[LogLine]) -> None:
        """New lines of this endpoint, just stored (called by the service, on the loop)."""
        if self.ended or self._behind:
            return
        for line in lines:
            if self.replica is None or line.replica == self.replica:
                self._queue.append(line)
        if len(self._queue) > MAX_QUEUED_PER_FOLLOWER:
            self._queue.clear()
            self._behind = True
        self._woken.set()

    def end(self) -> None:
        self.ended = True
        self._woken.set()

    def close(self) -> None:
        self.end()
        self._service._unfollow(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Follow:
        return self

    def _wanted(self, line: LogLine) -> bool:
        return (line.at_ms, line.id) > self._last and (self._since_ms is None or line.at_ms >= self._since_ms)

    async def __anext__(self) -> LogLine | None:
        service = self._service
        if self.ended:
            raise StopAsyncIteration
        if not self._started:
            self._started = True
            backlog = await service.query(
                self.uid, replica=self.replica, tail=self._tail, since_ms=self._since_ms, until_ms=self._until_ms,
            )
            # Lines stored while the backlog was read may be in both; the queue keeps only newer ones.
            self._queue.extendleft(reversed(backlog))
        while True:
            if self.ended:
                raise StopAsyncIteration
            while self._queue:
                line = self._queue.popleft()
                if not self._wanted(line):
                    continue
                if self._until_ms is not None and line.at_ms > self._until_ms:
                    self.end()
                    raise StopAsyncIteration
                self._last = (line.at_ms, line.id)
                return line
            if self._behind:
                self._behind = False
                missed = await service.store.after(
                    self.uid, self._last, replica=self.replica, since_ms=service.oldest_ms(self._since_ms),
                    until_ms=self._until_ms if self._until_ms is not None else service.newest_ms(),
                    limit=FOLLOW_CHUNK,
                )
                self._queue.extendleft(reversed(missed))
                if len(missed) == FOLLOW_CHUNK:
                    self._behind = True  # more to read after these
                continue
            timeout = self._keepalive_s
            if self._until_ms is not None:
                left = self._until_ms / 1000 - service.wall()
                if left <= 0:
                    self.end()
                    raise StopAsyncIteration
                timeout = min(timeout, left)
            self._woken.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._woken.wait()
            except TimeoutError:
                if self._until_ms is None or service.wall() * 1000 < self._until_ms:
                    return None  # a keep-alive


# --- the service --------------------------------------------------------------------------------


class LogService:
    """Collection, storage and serving of runtime logs. Owns its background tasks: `start()` makes
    them, `close()` cancels and awaits them and writes what was collected."""

    def __init__(
        self,
        runtime: Runtime,
        data_dir: Path | str,
        *,
        uid_of: Callable[[EndpointKey], str | None],
        secrets_of: Callable[[EndpointKey], Iterable[str]],
        config: LogsConfig = LogsConfig(),
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`uid_of(key)`: the endpoint's current incarnation, None when there is none (its
        containers' lines are then not stored); `secrets_of(key)`: the values to mask in its lines
        (each replica's engine API key is masked too, from the runtime's ReplicaInfo)."""
        self.runtime = runtime
        self.path = Path(data_dir) / LOGS_FILE
        self.config = config
        self.uid_of = uid_of
        self.secrets_of = secrets_of
        self.wall = wall
        self.clock = clock
        self.store: LogStore | None = None
        self.dropped_lines = 0  # by the rate bound, since start (a note line says so in the log too)
        self._tails: dict[str, _Tail] = {}  # by container id, while followed
        self._done: set[str] = set()  # containers whose log was read to its end
        self._cursors: dict[str, Cursor] = {}
        self._dirty: set[str] = set()  # containers whose cursor moved since the last write
        self._gone: set[str] = set()  # containers no longer listed: their cursors are deleted
        self._forgotten: set[str] = set()
        self._buffer: list[tuple[int, str, int, str, str]] = []  # (id, uid, at_ms, replica, text)
        self._next_id = 1
        self._last_at_ms = 0
        self._followers: dict[str, set[Follow]] = {}
        self._pending = asyncio.Event()  # lines wait in the buffer
        self._written = asyncio.Event()  # set and replaced after each write
        self._kick = asyncio.Event()  # poll now (a container died)
        self._tasks: list[asyncio.Task] = []
        self._write_lock = asyncio.Lock()
        self._closed = False

    # --- lifetime ---

    async def open(self) -> None:
        """Open the store and restore the cursors, without starting collection (tests tick by hand)."""
        if self.store is not None:
            return
        self.store = await LogStore.open(self.path, max_bytes_per_endpoint=self.config.log_max_bytes_per_endpoint)
        state = await self.store.state()
        self._next_id, self._last_at_ms = state.next_id, state.last_at_ms
        self._cursors = dict(state.cursors)
        self._forgotten = set(state.forgotten)

    async def start(self) -> None:
        await self.open()
        self._tasks = [
            asyncio.create_task(self._run_polls(), name="logs: follow containers"),
            asyncio.create_task(self._run_writes(), name="logs: write"),
            asyncio.create_task(self._run_deaths(), name="logs: container deaths"),
            asyncio.create_task(self._run_prunes(), name="logs: prune"),
        ]

    def end_followers(self) -> None:
        """End every live follower (their streams finish cleanly); for a shutdown's drain."""
        for follows in list(self._followers.values()):
            for follow in list(follows):
                follow.end()

    async def close(self) -> None:
        self._closed = True
        self.end_followers()
        tails = [t.task for t in self._tails.values() if t.task is not None]
        for task in [*self._tasks, *tails]:
            task.cancel()
        await asyncio.gather(*self._tasks, *tails, return_exceptions=True)
        self._tasks = []
        if self.store is not None:
            try:
                await self.flush()  # what was collected, with its cursors: a restart resumes after it
            finally:
                await self.store.close()
                self.store = None

    # --- the loops ---

    async def _run_polls(self) -> None:
        while True:
            try:
                await self.tick()
            except RuntimeError_ as error:
                log.warning("cannot list containers to collect their logs: %s; trying again", error)
            except Exception:
                log.exception("a log collection round failed")
            try:
                async with asyncio.timeout(self.config.log_poll_interval_s):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()

    async def _run_deaths(self) -> None:
        """A container that died is listed at once (not at the next poll): one that fails at start
        is removed by the controller moments later, and its last lines are the ones that matter."""
        while True:
            try:
                async with aclosing(self.runtime.events()) as events:
                    async for _ in events:
                        self._kick.set()
            except RuntimeError_ as error:
                log.warning("log collection: the runtime's event stream failed: %s", error)
            await asyncio.sleep(self.config.log_poll_interval_s)

    async def _run_writes(self) -> None:
        while True:
            await self._pending.wait()
            await asyncio.sleep(BATCH_WINDOW_S)  # one transaction for a burst
            try:
                await self.flush()
            except Exception:
                log.exception("writing %d log line(s) to %s failed; they are lost", len(self._buffer), self.path)

    async def _run_prunes(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("pruning old log lines failed")
            await asyncio.sleep(PRUNE_INTERVAL_S)

    # --- one round of collection (steppable) ---

    async def tick(self) -> list[str]:
        """List the containers, follow each one not followed yet whose endpoint is known, forget the
        cursors of containers that are gone; the replica ids it began to follow."""
        infos = await self.runtime.list()
        listed = {info.container_id for info in infos}
        began = []
        for info in infos:
            tail = self._tails.get(info.container_id)
            if tail is not None:
                tail.info = info
                tail.learn(self._secrets(info))
            elif info.container_id not in self._done and self._begin(info) is not None:
                began.append(info.replica_id)
        for cid in [cid for cid in self._cursors if cid not in listed and cid not in self._tails]:
            del self._cursors[cid]
            self._dirty.discard(cid)
            self._gone.add(cid)
        self._done &= listed
        now = self.clock()
        for tail in self._tails.values():
            if tail.dropped:
                self._note(tail, now)
        if self._gone:
            self._pending.set()
        return began

    def _secrets(self, info: ReplicaInfo) -> list[str]:
        values = list(self.secrets_of(info.endpoint) or ())
        if info.api_key:
            values.append(info.api_key)
        return values

    def _begin(self, info: ReplicaInfo) -> _Tail | None:
        """Follow the container's log from its start (after what a cursor says was consumed)."""
        if self._closed or info.container_id in self._tails:
            return self._tails.get(info.container_id)
        cursor = self._cursors.get(info.container_id)
        uid = cursor.uid if cursor is not None else self.uid_of(info.endpoint)
        if uid is None or uid in self._forgotten:
            return None
        # What a replica wrote while unread (before the first poll saw it, or while endpointd was
        # down) arrives at once: the rate bound credits it the time it was unread.
        rate = self.config.log_max_lines_per_s
        unread_s = self.config.log_poll_interval_s if cursor is None else self.wall() - cursor.at_ms / 1000
        now = self.clock()
        tail = _Tail(info, uid, skip=cursor.consumed if cursor else 0, bucket=_Bucket(rate, now, rate * unread_s),
                     noted_at=now)
        tail.learn(self._secrets(info))
        if cursor is None:
            self._cursors[info.container_id] = Cursor(uid, info.replica_id, 0, int(self.wall() * 1000))
        self._tails[info.container_id] = tail
        tail.task = asyncio.create_task(self._follow(tail), name=f"logs: follow {info.replica_id}")
        return tail

    async def _follow(self, tail: _Tail) -> None:
        info = tail.info
        cid = info.container_id
        ended = False
        try:
            index = 0
            stream = self.runtime.follow_logs(info.replica_id, tail=FROM_START)
            # Real time, not the injected clock: this bounds the loop's time, it decides nothing.
            slice_start = time.perf_counter()
            async with aclosing(stream):
                async for raw in stream:
                    index += 1
                    spent = time.perf_counter() - slice_start
                    if spent >= SLICE_S:
                        await asyncio.sleep(spent * (1 / FLOOD_SHARE - 1) if tail.dropped else 0)
                        slice_start = time.perf_counter()
                    if index <= tail.skip:
                        continue
                    tail.consumed = index
                    self._accept(tail, raw)
                    tail.read_one.set()
                    while len(self._buffer) >= MAX_BUFFERED_LINES and not self._closed:
                        await self._wait_written()
            ended = True
        except RuntimeError_ as error:
            if not isinstance(error, ReplicaNotFound):
                log.warning("following the log of replica %s failed: %s; trying again", info.replica_id, error)
        finally:
            tail.read_one.set()
            if self._tails.get(cid) is tail:
                del self._tails[cid]
            if tail.dropped:
                self._note(tail, self.clock())
        if ended:
            # Docker ends the stream of a container that is created but not started yet, too:
            # only an exited (or removed) container's log is read to its end.
            try:
                done = (await self.runtime.inspect(info.replica_id)).status is ReplicaStatus.EXITED
            except ReplicaNotFound:
                done = True
            except RuntimeError_:
                done = False
            if done:
                self._done.add(cid)

    def _accept(self, tail: _Tail, raw: str) -> None:
        cid = tail.info.container_id
        cursor = self._cursors.get(cid)
        if cursor is not None:
            self._cursors[cid] = Cursor(cursor.uid, cursor.replica, tail.consumed, int(self.wall() * 1000))
            self._dirty.add(cid)
        now = self.clock()
        if not tail.bucket.take(now):
            tail.dropped += 1
            self.dropped_lines += 1
            if now - tail.noted_at >= NOTE_EVERY_S:
                self._note(tail, now)
            return
        if tail.dropped:
            self._note(tail, now)
        # Masked before it is cut: a secret at the cut is masked whole, never stored in part.
        self._buffer_line(tail.uid, tail.info.replica_id, clean(tail.masker(raw), self.config.log_max_line_bytes))

    def _note(self, tail: _Tail, now: float) -> None:
        if not tail.dropped:
            return
        rate = self.config.log_max_lines_per_s
        self._buffer_line(
            tail.uid, tail.info.replica_id,
            f"[endpointd] dropped {tail.dropped} line(s) of this replica's log: it wrote more than {rate:g} lines/s",
        )
        tail.dropped = 0
        tail.noted_at = now

    def _buffer_line(self, uid: str, replica: str, text: str) -> None:
        # Times never go backwards (a clock step): (at_ms, id) order is collection order.
        at_ms = max(int(self.wall() * 1000), self._last_at_ms)
        self._last_at_ms = at_ms
        self._buffer.append((self._next_id, uid, at_ms, replica, text))
        self._next_id += 1
        self._pending.set()

    async def _wait_written(self) -> None:
        await self._written.wait()

    async def flush(self) -> None:
        """Write what was collected (lines, cursors) in one transaction; then wake the followers."""
        async with self._write_lock:
            self._pending.clear()
            rows, self._buffer = self._buffer, []
            cursors = {cid: self._cursors[cid] for cid in self._dirty if cid in self._cursors}
            self._dirty.clear()
            gone, self._gone = list(self._gone), set()
            if rows or cursors or gone:
                try:
                    await self.store.append(rows, cursors, gone)
                finally:
                    written, self._written = self._written, asyncio.Event()
                    written.set()
            self._publish(rows)

    def _publish(self, rows: list[tuple[int, str, int, str, str]]) -> None:
        by_uid: dict[str, list[LogLine]] = {}
        for line_id, uid, at_ms, replica, text in rows:
            if uid in self._followers:
                by_uid.setdefault(uid, []).append(LogLine(line_id, at_ms, replica, text))
        for uid, lines in by_uid.items():
            for follow in list(self._followers.get(uid, ())):
                follow.push(lines)

    async def prune(self) -> int:
        """Drop lines older than the retention (the size bound is kept at every write); how many."""
        cutoff_ms = int((self.wall() - self.config.log_retention_days * DAY_S) * 1000)
        return await self.store.prune_age(cutoff_ms)

    async def capture(self, replica_id: str) -> None:
        """Before a container is removed: if its log is not followed yet (it started and failed
        between two polls), read it now, waiting up to CAPTURE_TIMEOUT_S for its first line."""
        if self._closed or any(t.info.replica_id == replica_id for t in self._tails.values()):
            return
        try:
            info = await self.runtime.inspect(replica_id)
        except RuntimeError_:
            return
        if info.container_id in self._done:
            return
        tail = self._begin(info)
        if tail is None:
            return
        try:
            async with asyncio.timeout(CAPTURE_TIMEOUT_S):
                if info.status is ReplicaStatus.EXITED:
                    await asyncio.shield(tail.task)
                else:
                    await tail.read_one.wait()
        except TimeoutError:
            pass

    # --- reading ---

    def oldest_ms(self, since_ms: int | None = None) -> int:
        """The earliest time a read may return: the retention bound, or `since_ms` if later."""
        bound = int((self.wall() - self.config.log_retention_days * DAY_S) * 1000)
        return bound if since_ms is None else max(bound, since_ms)

    def newest_ms(self) -> int:
        return max(self._last_at_ms, int(self.wall() * 1000)) + 1

    async def query(self, uid: str, *, replica: str | None = None, tail: int = DEFAULT_TAIL,
                    since_ms: int | None = None, until_ms: int | None = None) -> list[LogLine]:
        """The latest `tail` lines of the endpoint incarnation (of one replica, within [since, until]
        in unix milliseconds), oldest first. Only what is stored: lines collected in the last
        BATCH_WINDOW_S may not be yet."""
        return await self.store.latest(
            uid, replica=replica, since_ms=self.oldest_ms(since_ms),
            until_ms=until_ms if until_ms is not None else self.newest_ms(), limit=tail,
        )

    def follow(self, uid: str, *, replica: str | None = None, tail: int = DEFAULT_TAIL, since_ms: int | None = None,
               until_ms: int | None = None, keepalive_s: float | None = None) -> Follow:
        """A live follower (see Follow); FollowersFull when the endpoint has the most allowed."""
        follows = self._followers.setdefault(uid, set())
        if len(follows) >= self.config.log_max_followers_per_endpoint:
            raise FollowersFull(uid, self.config.log_max_followers_per_endpoint)
        follow = Follow(self, uid, replica=replica, tail=tail, since_ms=since_ms, until_ms=until_ms,
                        keepalive_s=keepalive_s if keepalive_s is not None else self.config.log_keepalive_s)
        if self._closed:
            follow.ended = True
        else:
            follows.add(follow)
        return follow

    def _unfollow(self, follow: Follow) -> None:
        follows = self._followers.get(follow.uid)
        if follows is not None:
            follows.discard(follow)
            if not follows:
                del self._followers[follow.uid]

    def followers(self, uid: str) -> int:
        return len(self._followers.get(uid, ()))

    # --- deletion ---

    async def forget(self, uid: str) -> None:
        """The endpoint incarnation was deleted: its lines go, its followers end, and its containers
        (still draining, or adopted after a restart) are no longer read."""
        self._forgotten.add(uid)
        for follow in list(self._followers.pop(uid, ())):
            follow.end()
        tasks = [t.task for t in self._tails.values() if t.uid == uid and t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._buffer = [row for row in self._buffer if row[1] != uid]
        cursors = {cid: c for cid, c in self._cursors.items() if c.uid == uid}
        self._dirty -= set(cursors)
        async with self._write_lock:  # after a write in flight, which may hold its lines
            await self.store.forget(uid, cursors)


class Collecting:
    """A Runtime whose `stop` first lets the log collector read a container it has not followed
    yet (one that started and failed between two polls): give it to the controller."""

    def __init__(self, runtime: Runtime, logs: LogService) -> None:
        self._runtime = runtime
        self._logs = logs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    async def stop(self, replica_id: str, grace_s: float) -> None:
        await self._logs.capture(replica_id)
        await self._runtime.stop(replica_id, grace_s)

