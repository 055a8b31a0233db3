"""Runtime logs: every replica's stdout and stderr, collected as its container writes them, masked,
kept in SQLite (DATA_DIR/logs.db) after the replica stops, bounded per endpoint, and served to the
API (`query`, `follow`) until the endpoint is deleted (`forget`).

    LogService   (here) start()/close(), tick() (one collection round), query(), follow(), forget();
                 writes what the collector buffered, in one transaction per burst, and hands it to
                 the live followers
      Collector  (log_collect) polls `runtime.list()` and follows each container's log from its
                 start, resuming after a restart by each container's cursor; the rate bound
      masking    (log_mask) secret values masked, lines cleaned and cut
      LogStore   (log_store) logs.db, its own file, one writer thread and one reader thread; the
                 size and age bounds
      Follow     (log_follow) one live follower: the backlog, then new lines, woken on write
      LogLine    (log_line) a stored line and its text form

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoscaler.observe.log_collect import Collector
from autoscaler.observe.log_follow import Follow, Followers
from autoscaler.observe.log_line import LogLine
from autoscaler.observe.log_store import LogStore
from autoscaler.observe.loops import Loops
from engines.runtime import EndpointKey, Runtime
from proxy.core.config import setting

log = logging.getLogger("endpointd.logs")

LOGS_FILE = "logs.db"
DEFAULT_TAIL = 50  # the reference's Logs tab shows the latest 50 lines
# Lines collected within this window share one transaction.
BATCH_WINDOW_S = 0.05
# Age pruning runs this often (the API's reads apply the age bound exactly, whenever they run).
PRUNE_INTERVAL_S = 60.0
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
        self.path = Path(data_dir) / LOGS_FILE
        self.config = config
        self.wall = wall
        self.store: LogStore | None = None
        self.collector = Collector(
            runtime, uid_of=uid_of, secrets_of=secrets_of, max_line_bytes=config.log_max_line_bytes,
            lines_per_s=config.log_max_lines_per_s, poll_interval_s=config.log_poll_interval_s, wall=wall, clock=clock,
        )
        self._followers = Followers(config.log_max_followers_per_endpoint)
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self._closed = False

    # --- lifetime ---

    async def open(self) -> None:
        """Open the store and restore the cursors, without starting collection (tests tick by hand)."""
        if self.store is not None:
            return
        self.store = await LogStore.open(self.path, max_bytes_per_endpoint=self.config.log_max_bytes_per_endpoint)
        self.collector.restore(await self.store.state())

    def require_store(self) -> LogStore:
        """The store, from `open` to `close`."""
        if self.store is None:
            raise RuntimeError(f"{self.path}: the log service is not open")
        return self.store

    async def start(self, loops: Loops | None = None) -> None:
        """Open, then start the collection loops under `loops` (serve's, which counts their failures)."""
        await self.open()
        loops = loops or Loops()
        self._tasks = [
            loops.start("logs: follow containers", self.collector.run_polls),
            loops.start("logs: write", self._run_writes),
            loops.start("logs: container deaths", self.collector.run_deaths),
            loops.start("logs: prune", self._run_prunes),
        ]

    async def close(self) -> None:
        self._closed = True
        tails = self.collector.close()
        self._followers.end_all()
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

    async def _run_writes(self) -> None:
        while True:
            await self.collector.pending.wait()
            await asyncio.sleep(BATCH_WINDOW_S)  # one transaction for a burst
            try:
                await self.flush()
            except Exception:
                log.exception("writing %d log line(s) to %s failed; they are lost",
                              self.collector.buffered(), self.path)

    async def _run_prunes(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("pruning old log lines failed")
            await asyncio.sleep(PRUNE_INTERVAL_S)

    # --- collection and writing ---

    async def tick(self) -> list[str]:
        """One round of collection (see Collector.tick); the replica ids it began to follow."""
        return await self.collector.tick()

    async def capture(self, replica_id: str) -> None:
        """Before a container is removed: read its log if it is not followed yet (see Collector.capture)."""
        await self.collector.capture(replica_id)

    async def flush(self) -> None:
        """Write what was collected (lines, cursors) in one transaction; then wake the followers."""
        async with self._write_lock:
            rows, cursors, gone = self.collector.take()
            if rows or cursors or gone:
                try:
                    await self.require_store().append(rows, cursors, gone)
                finally:
                    self.collector.written()
            self._followers.publish(rows)

    async def prune(self) -> int:
        """Drop lines older than the retention (the size bound is kept at every write); how many."""
        cutoff_ms = int((self.wall() - self.config.log_retention_days * DAY_S) * 1000)
        return await self.require_store().prune_age(cutoff_ms)

    # --- reading ---

    def oldest_ms(self, since_ms: int | None = None) -> int:
        """The earliest time a read may return: the retention bound, or `since_ms` if later."""
        bound = int((self.wall() - self.config.log_retention_days * DAY_S) * 1000)
        return bound if since_ms is None else max(bound, since_ms)

    def newest_ms(self) -> int:
        return max(self.collector.last_at_ms, int(self.wall() * 1000)) + 1

    async def query(self, uid: str, *, replica: str | None = None, tail: int = DEFAULT_TAIL,
                    since_ms: int | None = None, until_ms: int | None = None) -> list[LogLine]:
        """The latest `tail` lines of the endpoint incarnation (of one replica, within [since, until]
        in unix milliseconds), oldest first. Only what is stored: lines collected in the last
        BATCH_WINDOW_S may not be yet."""
        return await self.require_store().latest(
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
        self._followers.end(uid)
        cursors = await self.collector.forget(uid)
        async with self._write_lock:  # after a write in flight, which may hold its lines
            await self.require_store().forget(uid, cursors)


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

