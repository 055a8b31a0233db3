"""The dashboard: static files under autoscaler/dashboard/, served at `/` on the one listener,
with a strict Content-Security-Policy. It is built on the public API only."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from proxy.app import handle, routed_by_host

STATIC = Path(__file__).parent / "dashboard"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def add_dashboard(app: web.Application) -> None:
    """`GET /` (index.html) and `GET /ui/{file}`, before the proxy's catch-all route."""

    async def index(request: web.Request) -> web.StreamResponse:
        if routed_by_host(request):  # the Host names an endpoint: `/` is that endpoint's path
            return await handle(request)
        return web.FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    async def asset(request: web.Request) -> web.StreamResponse:
        if routed_by_host(request):
            return await handle(request)
        name = request.match_info["file"]
        path = (STATIC / name).resolve()
        if not path.is_file() or STATIC.resolve() not in path.parents:
            raise web.HTTPNotFound(text='{"error": "no such dashboard file"}', content_type="application/json")
        return web.FileResponse(path, headers=SECURITY_HEADERS)

    app.router.add_get("/", index)
    app.router.add_get("/ui/{file:.+}", asset)
