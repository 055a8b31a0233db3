"""The dashboard: static files under autoscaler/dashboard/, served at `/` on the one listener,
with a strict Content-Security-Policy. It is built on the public API only."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from proxy.management.app import handle, routed_by_host

STATIC = Path(__file__).parent.parent / "dashboard"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


# Revalidate each time (ETag / Last-Modified make it a 304): an upgraded endpointd is never shown
# with the previous version's scripts.
HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
MAX_NAME_CHARS = 256  # longer than any file of the folder: refused before touching the file system
_ROOT = STATIC.resolve()


def _file(name: str) -> Path | None:
    """The dashboard file `name` names, or None: nothing outside the folder (`..`, symlinks out of
    it), no directories, and no name the file system would choke on (NUL, too long)."""
    if len(name) > MAX_NAME_CHARS or "\x00" in name:
        return None
    try:
        path = (STATIC / name).resolve()
        return path if _ROOT in path.parents and path.is_file() else None
    except (OSError, ValueError):
        return None


def add_dashboard(app: web.Application) -> None:
    """`GET /` (index.html) and `GET /ui/{file}`, before the proxy's catch-all route."""

    async def index(request: web.Request) -> web.StreamResponse:
        if routed_by_host(request):  # the Host names an endpoint: `/` is that endpoint's path
            return await handle(request)
        return web.FileResponse(STATIC / "index.html", headers=HEADERS)

    async def asset(request: web.Request) -> web.StreamResponse:
        if routed_by_host(request):
            return await handle(request)
        path = _file(request.match_info["file"])
        if path is None:
            raise web.HTTPNotFound(text='{"error": "no such dashboard file"}', content_type="application/json")
        return web.FileResponse(path, headers=HEADERS)

    app.router.add_get("/", index)
    app.router.add_get("/ui/{file:.+}", asset)
