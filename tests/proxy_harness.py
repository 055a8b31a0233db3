"""Test harness for the proxy: in-process fake replicas and a proxy in front of them, over real HTTP.

The proxy runs on the same listener code as `endpointd serve` (proxy/server.py `listen`), so the
connection guards and error handling under every test are the production ones."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.core.config import ProxyConfig
from proxy.core.control import AuthType, Identity, InMemoryControlPlane, Replica, RouteEntry
from proxy.core.pipeline import Pipeline
from proxy.management.app import PIPELINE, make_app
from proxy.server import Listening, listen
from proxy.workers.spawn import Workers, start_workers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKENS = {
    "owner": ("tok-alice", Identity("alice", frozenset())),
    "member": ("tok-bob", Identity("bob", frozenset({"acme"}))),
    "outsider": ("tok-eve", Identity("eve", frozenset({"other"}))),
    "admin": ("tok-root", Identity("root", frozenset(), is_admin=True)),
    "scraper": ("tok-prom", Identity("prom", frozenset(), scopes=frozenset({"metrics"}))),
}


def bearer(caller: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[caller][0]}"}


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


@dataclass
class ProxyServer:
    app: web.Application
    listening: Listening
    config: ProxyConfig
    workers: Workers | None = None  # worker processes beside this one (start(workers=N))

    @property
    def port(self) -> int:
        return self.listening.port

    async def close(self) -> None:
        await self.listening.shutdown(0, before_cleanup=self.workers.stop(0) if self.workers else None)


class Harness:
    def __init__(self) -> None:
        self.control = InMemoryControlPlane()
        for token, identity in TOKENS.values():
            self.control.add_token(token, identity)
        self.servers: list = []
        self.session: aiohttp.ClientSession | None = None
        self.proxy: ProxyServer | None = None
        self.scheme = "http"

    async def upstream(self, handler: Handler | None = None) -> Upstream:
        up = Upstream(handler)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", up._dispatch)
        up.server = TestServer(app, host="127.0.0.1")
        await up.server.start_server()
        self.servers.append(up.server)
        return up

    async def start(self, probe_secret: str | None = None, ssl=None, processes: int = 1, tap: bool = False,
                    **config) -> None:
        """`config`: ProxyConfig fields (port 0, any free one, unless given); `ssl`: the client's
        SSL context for an HTTPS proxy; `processes` > 1: real worker processes beside this one, as `endpointd serve --workers N` runs them; `tap`: the analytics tap on."""
        proxy_config = ProxyConfig(**{"host": "127.0.0.1", "port": 0, **config})
        app = make_app(proxy_config, self.control, probe_secret=probe_secret)
        if tap:
            app[PIPELINE].metrics.tap()
        listening = await listen(app, proxy_config, reuse_port=processes > 1)
        self.proxy = ProxyServer(app, listening, proxy_config)
        if processes > 1:
            main = listening.listeners[0]
            self.proxy.workers = await start_workers(app[PIPELINE], proxy_config, main.raw, main.port, processes - 1)
        self.servers.append(self.proxy)
        if proxy_config.tls_cert:
            self.scheme = "https"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=ssl if ssl is not None else True))

    def endpoint(
        self,
        name: str = "e1",
        *,
        namespace: str = "acme",
        auth: AuthType = AuthType.PUBLIC,
        upstreams: tuple[Upstream | str, ...] = (),
        **kw,
    ) -> RouteEntry:
        keys = kw.pop("api_keys", ())
        replicas = tuple(
            Replica(f"r{i}", u if isinstance(u, str) else u.address, keys[i] if i < len(keys) else None)
            for i, u in enumerate(upstreams)
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
        return f"{self.scheme}://127.0.0.1:{self.proxy.port}{path}"

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


@dataclass
class RawResponse:
    status: int | None  # None: the connection was closed without a response
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self):
        import json

        return json.loads(self.body)


def parse_response(data: bytes) -> RawResponse:
    if not data:
        return RawResponse(None, {}, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(lines[0].split()[1]), headers, body)


async def exchange(port: int, raw: bytes, timeout_s: float = 10.0, ssl=None) -> RawResponse:
    """Send raw bytes and read one response: up to its Content-Length, else until the server
    closes; a connection closed (or reset) without a response gives status None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl)
    try:
        writer.write(raw)
        data = b""
        async with asyncio.timeout(timeout_s):
            try:
                while chunk := await reader.read(65536):
                    data += chunk
                    head, sep, body = data.partition(b"\r\n\r\n")
                    if sep:
                        length = parse_response(head + sep).headers.get("content-length")
                        if length is not None and len(body) >= int(length):
                            break
            except ConnectionResetError:
                pass
        return parse_response(data)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (failing after `timeout_s`)."""
    data = b""
    async with asyncio.timeout(timeout_s):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


# Raw-socket helpers of the raw server's tests.
EP = "/endpoints/acme/e1"


async def connect(h):
    return await asyncio.open_connection("127.0.0.1", h.proxy.port)


async def read_one(reader) -> tuple[dict, bytes, int]:
    """One response of known length or chunked, on a keep-alive connection: (headers, body, status)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    response = parse_response(head)
    if "content-length" in response.headers:
        body = await asyncio.wait_for(reader.readexactly(int(response.headers["content-length"])), 10)
    elif response.headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), 10)
            if size == 0:
                break
            body += data[:-2]
    else:
        body = await closed_by_server(reader)
    return response.headers, body, response.status


def get(path: str, *extra: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(e + b"\r\n" for e in extra) + b"\r\n"
