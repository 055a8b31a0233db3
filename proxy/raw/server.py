"""The raw server's shared part: what every client connection of one listener uses (the
pipeline, the upstream pool, the cap, the timeouts, the aiohttp protocol factory for hand-offs),
and the protocol factory the listening socket calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..core.cap import ConnectionCap
from ..core.config import ProxyConfig
from ..core.pipeline import Pipeline
from .client import ClientProtocol
from .upstream import Pool


class RawServer:
    def __init__(
        self,
        pipeline: Pipeline,
        config: ProxyConfig,
        cap: ConnectionCap,
        scheme: str,
        aiohttp_protocol: Callable[[], asyncio.Protocol],
    ):
        self.pipeline = pipeline
        self.cap = cap
        self.scheme = scheme
        self.aiohttp_protocol = aiohttp_protocol  # for what is not the data plane
        self.head_timeout_s = config.header_read_timeout_s
        self.keepalive_timeout_s = config.keepalive_timeout_s
        self.pool = Pool(config.upstream_connect_timeout_s)
        self.loop = asyncio.get_running_loop()
        # Where a connection whose request is not for the data plane goes, with the bytes read of
        # it: this process's aiohttp protocol, or in a worker the main process (proxy/workers/).
        self.hand_off: Callable[[asyncio.Transport, bytes], None] = self.hand_to_app

    def __call__(self) -> ClientProtocol:
        return ClientProtocol(self)

    def hand_to_app(self, transport: asyncio.Transport, data: bytes) -> None:
        """Give a connection whose request is not for the data plane, with the bytes read of it,
        to the app's aiohttp protocol in this process."""
        handler = self.aiohttp_protocol()
        handler.hand_back = self.take_back  # type: ignore[attr-defined]  # a ClientConnection (proxy/management/connections.py)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    def take_back(self, transport: asyncio.Transport, data: bytes) -> None:
        """A connection handed off earlier, at the first bytes of its next request."""
        protocol = ClientProtocol(self)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    def close(self) -> None:
        """Close the idle upstream connections (at shutdown, once the clients are gone)."""
        self.pool.close()
