"""The open client connections of one listener, at most a limit: the same cap for the raw
server's connections (proxy/raw/client.py) and aiohttp's (proxy/management/connections.py), which
count a connection from `connection_made`. Past the limit a connection gets a ready-made 503 and
is closed at once, and one log line (at most every REFUSAL_LOG_INTERVAL_S) says how many were
refused."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Protocol

from .errors import ERROR_MESSAGE, header_safe

log = logging.getLogger("endpointd.proxy")

REFUSAL_LOG_INTERVAL_S = 10.0  # one line per interval however many connections are refused


class Connection(Protocol):
    """What the drain (proxy/server.py) asks of a counted connection."""

    @property
    def waiting_for_head(self) -> bool: ...

    def close_when_idle(self) -> bool: ...

    def force_close(self) -> None: ...


class ConnectionCap:
    """The open connections of one listener, at most `limit`."""

    def __init__(self, limit: int, listener: str, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.listener = listener
        self.open: set[Connection] = set()
        self.refused_total = 0
        self._clock = clock
        self._unlogged = 0
        self._logged_at: float | None = None
        self._empty: asyncio.Event | None = None
        body = json.dumps({"error": self.refusal}).encode()
        self.refusal_bytes = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\n{ERROR_MESSAGE}: {header_safe(self.refusal)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body

    @property
    def refusal(self) -> str:
        return f"this server already has {self.limit} open connections, its limit; retry later"

    def admit(self, connection: Connection) -> bool:
        if len(self.open) >= self.limit:
            self.refused_total += 1
            self._unlogged += 1
            now = self._clock()
            if self._logged_at is None or now - self._logged_at >= REFUSAL_LOG_INTERVAL_S:
                since = "" if self._logged_at is None else f" in the last {now - self._logged_at:.0f} s"
                log.warning(
                    "refusing new connections on %s: %d open, the limit (max_client_connections); %d refused%s. "
                    "Raise the limit (and the open-files limit, ulimit -n), or find who holds idle connections",
                    self.listener, len(self.open), self._unlogged, since,
                )
                self._logged_at = now
                self._unlogged = 0
            return False
        self.open.add(connection)
        return True

    def release(self, connection: Connection) -> None:
        self.open.discard(connection)
        if not self.open and self._empty is not None:
            self._empty.set()

    async def wait_empty(self) -> None:
        if not self.open:
            return
        if self._empty is None or self._empty.is_set():
            self._empty = asyncio.Event()
        await self._empty.wait()
