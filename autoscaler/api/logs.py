"""The runtime-logs routes of the management API, as the reference's Logs tab serves them: the
latest lines as text (`GET /v2/endpoint/{ns}/{name}/logs`) and a live follow over Server-Sent
Events (`…/logs/sse`); and `stream_lines`, an HTTP client of both for the command line.

Each line reads `{time} {replica} {text}`: the time it was collected, RFC 3339 in UTC with
milliseconds (`2025-01-02T03:04:05.678Z`), the replica id, the line as the engine wrote it with
secret values masked as ***. Errors are the API's (`{"error": ...}`), plus 429 for a follower
beyond the per-endpoint bound.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from autoscaler.api import access
from autoscaler.api.base import Invalid
from autoscaler.model import times
from autoscaler.observe.log_line import format_line
from autoscaler.observe.logs import DEFAULT_TAIL, LogService
from engines.errors import EndpointdError

TAIL_MAX = 10_000
LINE_MAX_LENGTH_MAX = 65_536
# Replica ids are short hex strings; anything else can match no line.
REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PARAMETERS = ("replica", "tail", "since", "until", "line_max_length")
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a reverse proxy in front (nginx) must not hold events back
}
KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class LogQuery:
    replica: str | None = None
    tail: int = DEFAULT_TAIL
    since_ms: int | None = None
    until_ms: int | None = None
    line_max_length: int | None = None  # characters; a longer line is cut to this many (no marker)


def parse_time(name: str, raw: str) -> int:
    """An RFC 3339 time (with `Z` or an offset) or unix seconds, as unix milliseconds."""
    try:
        return times.unix_ms(times.parse_time(raw))
    except times.BadTime:
        raise Invalid(f"{name} must be an RFC 3339 time with a time zone (2025-01-02T03:04:05Z) or unix seconds "
                      f"from 0 to {times.MAX_UNIX_S}; got {raw[:64]!r}") from None


def _integer(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise Invalid(f"{name} must be an integer from {low} to {high}; got {raw[:64]!r}")
    return value


def parse_query(query: Mapping[str, str]) -> LogQuery:
    """The filters of a logs request; Invalid (400) naming the parameter and its valid range."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise Invalid(f"unknown query parameter {unknown[0][:64]!r}; the logs take {', '.join(PARAMETERS)}")
    getall = getattr(query, "getall", None)  # a request's query is a MultiDict
    if getall is not None:
        for name in PARAMETERS:
            if len(getall(name, ())) > 1:
                raise Invalid(f"{name} is given more than once; give it once")
    replica = query.get("replica") or None
    if replica is not None and not REPLICA_ID.fullmatch(replica):
        raise Invalid(f"replica must be a replica id (letters, digits, '_', '.', '-'; at most 64); got {replica[:64]!r}")
    tail = _integer("tail", query["tail"], 1, TAIL_MAX) if "tail" in query else DEFAULT_TAIL
    cut = (_integer("line_max_length", query["line_max_length"], 1, LINE_MAX_LENGTH_MAX)
           if "line_max_length" in query else None)
    since = parse_time("since", query["since"]) if query.get("since") else None
    until = parse_time("until", query["until"]) if query.get("until") else None
    if since is not None and until is not None and since > until:
        raise Invalid("since must not be after until")
    return LogQuery(replica, tail, since, until, cut)


def add_routes(router: web.UrlDispatcher, api: Any, logs: LogService) -> None:
    """Register the logs routes on the `/v2` sub-app's router (whose middleware maps errors); `api`
    is the ManagementApi."""

    async def endpoint_uid(request: web.Request) -> str:
        ns, name = request.match_info["ns"], request.match_info["name"]
        await access.member(request, api.store, ns)
        return (await api.record(ns, name)).uid  # NotFound (404) for an unknown endpoint

    async def text(request: web.Request) -> web.Response:
        """The latest lines (50 unless `tail` says), oldest first, as text/plain. `line_max_length`
        cuts each longer line to that many characters, without a marker."""
        uid = await endpoint_uid(request)
        q = parse_query(request.query)
        lines = await logs.query(uid, replica=q.replica, tail=q.tail, since_ms=q.since_ms, until_ms=q.until_ms)
        body = "".join(format_line(line, q.line_max_length) + "\n" for line in lines)
        return web.Response(text=body, content_type="text/plain", charset="utf-8")

    async def sse(request: web.Request) -> web.StreamResponse:
        """The matching backlog, then each new line within moments of its collection, one event
        each (`data: <line>`), and a keep-alive comment when idle; until the client goes away,
        the endpoint is deleted or `until` has passed."""
        uid = await endpoint_uid(request)
        q = parse_query(request.query)
        follow = logs.follow(uid, replica=q.replica, tail=q.tail, since_ms=q.since_ms, until_ms=q.until_ms)
        async with follow:
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            try:
                async for line in follow:
                    if line is None:
                        await response.write(KEEPALIVE)
                    else:
                        # A stored line holds no CR or LF (clean()), so it is one `data:` field.
                        await response.write(b"data: " + format_line(line, q.line_max_length).encode() + b"\n\n")
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client went away
        return response

    router.add_get("/endpoint/{ns}/{name}/logs", text)
    router.add_get("/endpoint/{ns}/{name}/logs/sse", sse, allow_head=False)  # a HEAD would follow forever


# --- OpenAPI ----------------------------------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}
_PATH = [
    {"name": "ns", "in": "path", "required": True, "schema": {"type": "string"}, "description": "user or org"},
    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
]
_TIME = {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0, "maximum": times.MAX_UNIX_S}]}
_FILTERS = [
    {"name": "replica", "in": "query", "schema": {"type": "string", "pattern": REPLICA_ID.pattern},
     "description": "only this replica's lines"},
    {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": TAIL_MAX, "default": DEFAULT_TAIL},
     "description": "the latest this many matching lines"},
    {"name": "since", "in": "query", "schema": _TIME, "description": "lines collected at or after: RFC 3339 or unix seconds"},
    {"name": "until", "in": "query", "schema": _TIME, "description": "lines collected at or before: RFC 3339 or unix seconds"},
    {"name": "line_max_length", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": LINE_MAX_LENGTH_MAX},
     "description": "longer lines are cut to this many characters"},
]
_ERRORS = {str(code): {"description": about, "content": {"application/json": {"schema": _ERROR}}}
           for code, about in ((400, "a parameter is invalid"), (401, "no valid token"),
                               (403, "not a member of the namespace"), (404, "no such endpoint"))}
_LINE = "one line per log line: `{RFC 3339 UTC time with milliseconds} {replica id} {line}`, oldest first"

OPENAPI_PATHS: dict[str, Any] = {
    "/v2/endpoint/{ns}/{name}/logs": {"get": {
        "summary": "the endpoint's runtime logs (the latest 50 lines unless `tail` says)",
        "parameters": [*_PATH, *_FILTERS],
        "responses": {"200": {"description": _LINE, "content": {"text/plain": {"schema": {"type": "string"}}}},
                      **_ERRORS},
    }},
    "/v2/endpoint/{ns}/{name}/logs/sse": {"get": {
        "summary": "follow the endpoint's runtime logs: the backlog, then new lines as they come",
        "parameters": [*_PATH, *_FILTERS],
        "responses": {
            "200": {"description": "Server-Sent Events, one `data: <line>` event per log line (" + _LINE
                    + "); a `: keep-alive` comment when idle",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            **_ERRORS,
            "429": {"description": "the endpoint has as many live followers as allowed",
                    "content": {"application/json": {"schema": _ERROR}}},
        },
    }},
}


# --- a client, for `endpointd logs` -------------------------------------------------------------


async def stream_lines(
    session: aiohttp.ClientSession, base_url: str, token: str, ns: str, name: str, *,
    follow: bool = False, replica: str | None = None, tail: int | None = None,
) -> AsyncIterator[str]:
    """The endpoint's log lines through the management API (formatted as above); with `follow`,
    then new ones until the server ends the stream. Raises `LogsRequestFailed` with the API's
    error sentence for a 4xx/5xx."""
    params = {k: str(v) for k, v in (("replica", replica), ("tail", tail)) if v is not None}
    url = f"{base_url.rstrip('/')}/v2/endpoint/{ns}/{name}/logs" + ("/sse" if follow else "")
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None) if follow else aiohttp.ClientTimeout(total=60)
    async with session.get(url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as r:
        if r.status >= 400:
            try:
                message = (await r.json(content_type=None))["error"]
            except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
                message = (await r.text())[:500]
            raise LogsRequestFailed(r.status, message)
        if not follow:
            for line in (await r.text()).splitlines():
                yield line
            return
        async for raw in r.content:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data: "):
                yield line[len("data: "):]


class LogsRequestFailed(EndpointdError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
