"""Live followers of an endpoint's logs: each Follow hands out the backlog, then new lines, woken
when they are written (no polling); Followers keeps them per endpoint incarnation, at most
`log_max_followers_per_endpoint` each (FollowersFull beyond), and hands them each write's lines.
A follower's queue is bounded: beyond it, the follower catches up from the store."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol, Self

from autoscaler.observe.log_line import LogLine
from autoscaler.observe.log_store import LogStore
from engines.errors import EndpointdError

# A follower's queue of new lines; beyond it the queue is dropped and the follower reads what it
# missed from the store, in chunks of FOLLOW_CHUNK.
MAX_QUEUED_PER_FOLLOWER = 2_000
FOLLOW_CHUNK = 1_000


class Source(Protocol):
    """What a follower reads (the LogService): the stored lines, within the retention."""

    wall: Callable[[], float]

    def require_store(self) -> LogStore: ...

    async def query(self, uid: str, *, replica: str | None, tail: int, since_ms: int | None,
                    until_ms: int | None) -> list[LogLine]: ...

    def oldest_ms(self, since_ms: int | None = None) -> int: ...

    def newest_ms(self) -> int: ...


class FollowersFull(EndpointdError):
    """An endpoint already has as many live followers as allowed."""

    status = 429

    def __init__(self, uid: str, limit: int) -> None:
        super().__init__(f"this endpoint's logs already have {limit} live followers, the most allowed; close one first")
        self.uid = uid
        self.limit = limit


class Follow:
    """One live follower of an endpoint's logs: an async iterator of the backlog (the latest `tail`
    matching lines), then each new matching line once it is stored, and None after `keepalive_s`
    without a line (a keep-alive for the caller to send). Registered when made (FollowersFull
    beyond the bound); `close()` (or `async with`) unregisters it. Ends when the endpoint is
    forgotten, the service closes, or `until` has passed."""

    def __init__(self, service: Source, followers: Followers, uid: str, *, replica: str | None, tail: int,
                 since_ms: int | None, until_ms: int | None, keepalive_s: float) -> None:
        self._service = service
        self._followers = followers
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
        self._followers.discard(self)

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
                missed = await service.require_store().after(
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


class Followers:
    """The live followers, by endpoint incarnation (uid), at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_uid: dict[str, set[Follow]] = {}

    def check(self, uid: str) -> None:
        """FollowersFull when the endpoint has the most followers allowed."""
        if len(self._by_uid.get(uid, ())) >= self.limit:
            raise FollowersFull(uid, self.limit)

    def add(self, follow: Follow) -> None:
        self._by_uid.setdefault(follow.uid, set()).add(follow)

    def discard(self, follow: Follow) -> None:
        follows = self._by_uid.get(follow.uid)
        if follows is not None:
            follows.discard(follow)
            if not follows:
                del self._by_uid[follow.uid]

    def count(self, uid: str) -> int:
        return len(self._by_uid.get(uid, ()))

    def publish(self, rows: list[tuple[int, str, int, str, str]]) -> None:
        """Hand just-written rows (id, uid, at_ms, replica, text) to their endpoints' followers."""
        by_uid: dict[str, list[LogLine]] = {}
        for line_id, uid, at_ms, replica, text in rows:
            if uid in self._by_uid:
                by_uid.setdefault(uid, []).append(LogLine(line_id, at_ms, replica, text))
        for uid, lines in by_uid.items():
            for follow in list(self._by_uid.get(uid, ())):
                follow.push(lines)

    def end(self, uid: str) -> None:
        """End and drop the endpoint's followers (it was deleted)."""
        for follow in list(self._by_uid.pop(uid, ())):
            follow.end()

    def end_all(self) -> None:
        """End every follower (their streams finish cleanly); they stay until closed."""
        for follows in list(self._by_uid.values()):
            for follow in list(follows):
                follow.end()
