"""The Python baseline: a bare aiohttp + uvloop pass-through proxy, without auth, counting or metrics."""

# Usage: python bare_proxy.py LISTEN_PORT UPSTREAM_PORT

import sys

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


async def forward(request: web.Request) -> web.StreamResponse:
    url = request.app[UPSTREAM] + request.raw_path
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = request.content.iter_chunked(65536) if request.body_exists else None
    async with request.app[SESSION].request(request.method, url, headers=headers, data=body) as upstream:
        drop = HOP_BY_HOP | {"content-length"}
        response = web.StreamResponse(
            status=upstream.status, headers={k: v for k, v in upstream.headers.items() if k.lower() not in drop}
        )
        await response.prepare(request)
        while chunk := await upstream.content.readany():
            await response.write(chunk)
        await response.write_eof()
        return response


async def session(app: web.Application):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False) as s:
        app[SESSION] = s
        yield


if __name__ == "__main__":
    app = web.Application()
    app[UPSTREAM] = f"http://127.0.0.1:{sys.argv[2]}"
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
