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
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.runtime import (
    EndpointKey,
    ReplicaInfo,
    ReplicaNotFound,
    ReplicaStatus,
    Runtime,
    RuntimeError_,
)
from proxy.config import setting

from autoscaler.observe.log_follow import Follow, Followers
from autoscaler.observe.log_line import LogLine
from autoscaler.observe.log_mask import Masker, clean
from autoscaler.observe.log_store import Cursor, LogStore

log = logging.getLogger("endpointd.logs")

LOGS_FILE = "logs.db"
DEFAULT_TAIL = 50  # the reference's Logs tab shows the latest 50 lines
# Read a container's log from its very first line: the Runtime's `tail` counts lines from the end,
# and Docker returns all of them when asked for more than there are.
FROM_START = 1 << 30
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
# Age pruning runs this often (the API's reads apply the age bound exactly, whenever they run).
PRUNE_INTERVAL_S = 60.0
# How long `capture` (before a container is removed) waits for its log to be read.
CAPTURE_TIMEOUT_S = 1.0
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
        self._followers = Followers(config.log_max_followers_per_endpoint)
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

    async def close(self) -> None:
        self._closed = True
        self._followers.end_all()
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
            self._followers.publish(rows)

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
        self._followers.check(uid)
        follow = Follow(self, self._followers, uid, replica=replica, tail=tail, since_ms=since_ms, until_ms=until_ms,
                        keepalive_s=keepalive_s if keepalive_s is not None else self.config.log_keepalive_s)
        if self._closed:
            follow.ended = True
        else:
            self._followers.add(follow)
        return follow

    def followers(self, uid: str) -> int:
        return self._followers.count(uid)

    # --- deletion ---

    async def forget(self, uid: str) -> None:
        """The endpoint incarnation was deleted: its lines go, its followers end, and its containers
        (still draining, or adopted after a restart) are no longer read."""
        self._forgotten.add(uid)
        self._followers.end(uid)
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

