"""Collection of runtime logs: the Collector polls `runtime.list()` and follows each container's
log from its start (one task per container); a container is bound to its endpoint *incarnation*
(uid) when first seen, so a re-created endpoint of the same name never gets its lines. Each line
is masked and cut (log_mask), held to its replica's rate bound, and buffered, with the container's
cursor, for the service to write in one transaction (`take`, then `written`).

Resuming after a restart. The `Runtime` seam gives a container's log as lines, without Docker's
timestamps and without `since`, so a restarted endpointd cannot ask for "the lines after time T".
It counts instead: each container's cursor (how many of its lines were consumed) is written in the
same transaction as the lines it covers, and a restarted collector reads the container's log from
its start again and skips that many. No line is stored twice, and none is lost to a crash (lines
not yet written are read again). With Docker's log rotation (json-file `max-file`), lines rotated
away shift the count: lines may then be missed on resume, never duplicated. Times are when the
collector read a line, which is within about a second of its writing for a followed container;
lines written while endpointd was down get the time they were read after the restart.

Bounds, so that a log-spewing engine cannot stall the event loop nor fill the disk: each replica
may write `log_max_lines_per_s` lines per second (bursts of twice that pass), beyond which lines
are dropped and a note line says how many; a reader gives the loop back every few milliseconds;
a full buffer holds the readers back until the next write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field

from autoscaler.observe.log_mask import Masker, clean
from autoscaler.observe.log_store import Cursor, StoredState
from engines.runtime import (
    ContainerStatus,
    EndpointKey,
    ReplicaInfo,
    ReplicaNotFound,
    Runtime,
    RuntimeFailure,
)

log = logging.getLogger("endpointd.logs")

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
# Lines waiting for the writer; beyond it, followers of containers wait for the write (backpressure
# on the container's log stream, never a loss).
MAX_BUFFERED_LINES = 50_000
# How long `capture` (before a container is removed) waits for its log to be read.
CAPTURE_TIMEOUT_S = 1.0


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
    task: asyncio.Task[None] | None = None

    def learn(self, secrets: Iterable[str]) -> None:
        """Add secret values; old ones stay masked (an update's roll: old replicas have old secrets)."""
        new = {s for s in secrets if isinstance(s, str)} - self.secrets
        if new:
            self.secrets |= new
            self.masker = Masker(self.secrets)


class Collector:
    """Follows the containers' logs into a buffer of lines to write. Steppable: `tick()` is one
    round of collection; `run_polls()` and `run_deaths()` are its loops, for the service to run."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        uid_of: Callable[[EndpointKey], str | None],
        secrets_of: Callable[[EndpointKey], Iterable[str]],
        max_line_bytes: int,
        lines_per_s: float,
        poll_interval_s: float,
        wall: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        self.runtime = runtime
        self.uid_of = uid_of
        self.secrets_of = secrets_of
        self.max_line_bytes = max_line_bytes
        self.lines_per_s = lines_per_s
        self.poll_interval_s = poll_interval_s
        self.wall = wall
        self.clock = clock
        self.dropped_lines = 0  # by the rate bound, since start (a note line says so in the log too)
        self._tails: dict[str, _Tail] = {}  # by container id, while followed
        self._done: set[str] = set()  # containers whose log was read to its end
        self._cursors: dict[str, Cursor] = {}
        self._dirty: set[str] = set()  # containers whose cursor moved since the last write
        self._gone: set[str] = set()  # containers no longer listed: their cursors are deleted
        self._forgotten: set[str] = set()
        self._buffer: list[tuple[int, str, int, str, str]] = []  # (id, uid, at_ms, replica, text)
        self._next_id = 1
        self.last_at_ms = 0  # of the last line buffered
        self.pending = asyncio.Event()  # lines wait in the buffer
        self._written = asyncio.Event()  # set and replaced after each write
        self._kick = asyncio.Event()  # poll now (a container died)
        self.closed = False

    def restore(self, state: StoredState) -> None:
        """Resume from what the store holds: the next line id, the last time, the cursors."""
        self._next_id, self.last_at_ms = state.next_id, state.last_at_ms
        self._cursors = dict(state.cursors)
        self._forgotten = set(state.forgotten)

    def close(self) -> list[asyncio.Task]:
        """Follow no more containers; the tasks that follow the current ones, for the caller to end."""
        self.closed = True
        return [t.task for t in self._tails.values() if t.task is not None]

    # --- the loops ---

    async def run_polls(self) -> None:
        while True:
            try:
                await self.tick()
            except RuntimeFailure as error:
                log.warning("cannot list containers to collect their logs: %s; trying again", error)
            except Exception:
                log.exception("a log collection round failed")
            try:
                async with asyncio.timeout(self.poll_interval_s):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()

    async def run_deaths(self) -> None:
        """A container that died is listed at once (not at the next poll): one that fails at start
        is removed by the controller moments later, and its last lines are the ones that matter."""
        while True:
            try:
                async with aclosing(self.runtime.events()) as events:
                    async for _ in events:
                        self._kick.set()
            except RuntimeFailure as error:
                log.warning("log collection: the runtime's event stream failed: %s", error)
            await asyncio.sleep(self.poll_interval_s)

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
            self.pending.set()
        return began

    def _secrets(self, info: ReplicaInfo) -> list[str]:
        values = list(self.secrets_of(info.endpoint) or ())
        if info.api_key:
            values.append(info.api_key)
        return values

    def _begin(self, info: ReplicaInfo) -> _Tail | None:
        """Follow the container's log from its start (after what a cursor says was consumed)."""
        if self.closed or info.container_id in self._tails:
            return self._tails.get(info.container_id)
        cursor = self._cursors.get(info.container_id)
        uid = cursor.uid if cursor is not None else self.uid_of(info.endpoint)
        if uid is None or uid in self._forgotten:
            return None
        # What a replica wrote while unread (before the first poll saw it, or while endpointd was
        # down) arrives at once: the rate bound credits it the time it was unread.
        rate = self.lines_per_s
        unread_s = self.poll_interval_s if cursor is None else self.wall() - cursor.at_ms / 1000
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
                    while len(self._buffer) >= MAX_BUFFERED_LINES and not self.closed:
                        await self._wait_written()
            ended = True
        except RuntimeFailure as error:
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
                done = (await self.runtime.inspect(info.replica_id)).status is ContainerStatus.EXITED
            except ReplicaNotFound:
                done = True
            except RuntimeFailure:
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
        self._buffer_line(tail.uid, tail.info.replica_id, clean(tail.masker(raw), self.max_line_bytes))

    def _note(self, tail: _Tail, now: float) -> None:
        if not tail.dropped:
            return
        rate = self.lines_per_s
        self._buffer_line(
            tail.uid, tail.info.replica_id,
            f"[endpointd] dropped {tail.dropped} line(s) of this replica's log: it wrote more than {rate:g} lines/s",
        )
        tail.dropped = 0
        tail.noted_at = now

    def _buffer_line(self, uid: str, replica: str, text: str) -> None:
        # Times never go backwards (a clock step): (at_ms, id) order is collection order.
        at_ms = max(int(self.wall() * 1000), self.last_at_ms)
        self.last_at_ms = at_ms
        self._buffer.append((self._next_id, uid, at_ms, replica, text))
        self._next_id += 1
        self.pending.set()

    async def _wait_written(self) -> None:
        await self._written.wait()

    async def capture(self, replica_id: str) -> None:
        """Before a container is removed: if its log is not followed yet (it started and failed
        between two polls), read it now, waiting up to CAPTURE_TIMEOUT_S for its first line."""
        if self.closed or any(t.info.replica_id == replica_id for t in self._tails.values()):
            return
        try:
            info = await self.runtime.inspect(replica_id)
        except RuntimeFailure:
            return
        if info.container_id in self._done:
            return
        tail = self._begin(info)
        if tail is None:
            return
        try:
            async with asyncio.timeout(CAPTURE_TIMEOUT_S):
                if info.status is ContainerStatus.EXITED:
                    assert tail.task is not None  # _begin starts the task of every tail it makes
                    await asyncio.shield(tail.task)
                else:
                    await tail.read_one.wait()
        except TimeoutError:
            pass

    # --- the write's side ---

    def buffered(self) -> int:
        """Lines waiting to be written."""
        return len(self._buffer)

    def take(self) -> tuple[list[tuple[int, str, int, str, str]], dict[str, Cursor], list[str]]:
        """What to write in one transaction: the lines (id, uid, at_ms, replica, text) collected
        since the last take, the cursors they advance, the containers that are gone."""
        self.pending.clear()
        rows, self._buffer = self._buffer, []
        cursors = {cid: self._cursors[cid] for cid in self._dirty if cid in self._cursors}
        self._dirty.clear()
        gone, self._gone = list(self._gone), set()
        return rows, cursors, gone

    def written(self) -> None:
        """The last take was written (or its write failed): readers held back by a full buffer go on."""
        written, self._written = self._written, asyncio.Event()
        written.set()

    async def forget(self, uid: str) -> dict[str, Cursor]:
        """The endpoint incarnation was deleted: its containers are no longer read and its unwritten
        lines go; the cursors of its containers, to keep (a restart does not read them again)."""
        self._forgotten.add(uid)
        tasks = [t.task for t in self._tails.values() if t.uid == uid and t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._buffer = [row for row in self._buffer if row[1] != uid]
        cursors = {cid: c for cid, c in self._cursors.items() if c.uid == uid}
        self._dirty -= set(cursors)
        return cursors
