"""Test harness for the proxy: in-process fake replicas and a proxy in front of them, over real HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import PIPELINE, make_app
from proxy.config import ProxyConfig
from proxy.control import AuthType, Identity, InMemoryControlPlane, Replica, RouteEntry
from proxy.pipeline import Pipeline

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKENS = {
    "owner": ("tok-alice", Identity("alice", frozenset())),
    "member": ("tok-bob", Identity("bob", frozenset({"acme"}))),
    "outsider": ("tok-eve", Identity("eve", frozenset({"other"}))),
}


@dataclass
class Upstream:
    """A fake replica. Every request is recorded; `handler` decides the answer."""

    handler: Handler | None = None
    seen: list[dict] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            {"method": request.method, "path": request.raw_path, "headers": dict(request.headers)}
        )
        self.arrived.set()
        try:
            if self.handler is not None:
                return await self.handler(request)
            body = await request.read()
            return web.json_response({"path": request.raw_path, "body_len": len(body)})
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"


def free_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Harness:
    def __init__(self) -> None:
        self.control = InMemoryControlPlane()
        for token, identity in TOKENS.values():
            self.control.add_token(token, identity)
        self.servers: list[TestServer] = []
        self.session: aiohttp.ClientSession | None = None
        self.proxy: TestServer | None = None

    async def upstream(self, handler: Handler | None = None) -> Upstream:
        up = Upstream(handler)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", up._dispatch)
        up.server = TestServer(app, host="127.0.0.1")
        await up.server.start_server()
        self.servers.append(up.server)
        return up

    async def start(self, probe_secret: str | None = None, **config) -> None:
        app = make_app(ProxyConfig(**config), self.control, probe_secret=probe_secret)
        self.proxy = TestServer(app, host="127.0.0.1")
        await self.proxy.start_server()
        self.servers.append(self.proxy)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    def endpoint(
        self,
        name: str = "e1",
        *,
        namespace: str = "acme",
        auth: AuthType = AuthType.PUBLIC,
        upstreams: tuple[Upstream | str, ...] = (),
        **kw,
    ) -> RouteEntry:
        replicas = tuple(
            Replica(f"r{i}", u if isinstance(u, str) else u.address) for i, u in enumerate(upstreams)
        )
        entry = RouteEntry(namespace=namespace, name=name, auth=auth, replicas=replicas, **kw)
        self.control.put(entry)
        return entry

    @property
    def pipeline(self) -> Pipeline:
        assert self.proxy is not None
        return self.proxy.app[PIPELINE]

    def url(self, path: str) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.port}{path}"

    def request(self, method: str, path: str, **kw):
        assert self.session is not None
        return self.session.request(method, self.url(path), **kw)

    def pending(self, key: str = "acme/e1") -> int:
        return self.pipeline.counter.snapshot().pending(key)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        for server in reversed(self.servers):
            await server.close()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a condition (checked every loop turn), failing after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)
