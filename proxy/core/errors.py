"""The proxy's refusals and failures, one exception each, and their one mapping to HTTP.

    ProxyError                  root; `status`, `cause` (metric label) and a sentence for the caller
      BadRequest          400   e.g. a malformed X-Scale-Up-Timeout
        MalformedBody     400   the request body broke its own framing (closes the connection)
        Pipelined         400   a request pipelined behind one the other server serves (closes)
      EndpointPaused      400   paused by a user; only `resume` brings it back (reference behaviour)
      Unauthorized        401   no token, or one we do not know (with WWW-Authenticate: Bearer)
      Forbidden           403   a valid token without access to the endpoint's namespace
      NotFound            404   no such endpoint
      RequestTimeout      408   a small request body did not arrive within header_read_timeout_s
      PayloadTooLarge     413   request body over the configured limit
      RateLimited         429   a token's or a namespace's rate limit is reached (with Retry-After)
      HeadersTooLarge     431   a header line too long, or too many headers (from the HTTP parser)
      UpstreamFailed      502   the replica could not be reached, or broke the response
      Unavailable         503   no replica now: cold start, hold expired, hold queue full, failed
      UpstreamTimeout     504   the replica sent no response headers within the response-start
                                timeout, or stopped sending for longer than the idle timeout

Every refusal carries its sentence twice: as the JSON body `{"error": ...}` and in the header
`X-Error-Message` (which the huggingface_hub client prints). On an endpoint's OpenAI routes
(`{url}/v1/...`) the body is OpenAI's error shape instead, `{"error": {"message", "type", "code"}}`
as vLLM answers, because the `openai` SDK shows only `error.message` of a refusal. The header is made safe first —
printable ASCII only, at most MAX_HEADER_MESSAGE characters — because a sentence may quote what the
caller sent (a path, a header value), and raw input in a header could break the response.
"""

from __future__ import annotations

import json
import re

from engines.errors import EndpointdError

ERROR_MESSAGE = "X-Error-Message"
MAX_HEADER_MESSAGE = 500
MAX_QUOTED_INPUT = 100
_UNSAFE = re.compile(r"[^\x20-\x7e]")
# `/v1` or `/v1/...` of an endpoint: under its `/endpoints/{ns}/{name}` prefix, or at the root of
# its route domain.
_OPENAI_ROUTE = re.compile(r"(?:/endpoints/[^/?#]+/[^/?#]+)?/v1(?:[/?#]|$)")


class ProxyError(EndpointdError):
    status = 500
    cause = "internal"
    # Whether the connection must close after the answer: what is left of the request on it
    # cannot be read as a next request.
    closes_connection = False

    def __init__(self, message: str, *, cause: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        if cause is not None:
            self.cause = cause
        self.retry_after_s = retry_after_s


class BadRequest(ProxyError):
    status, cause = 400, "bad_request"


class MalformedBody(BadRequest):
    cause = "malformed_body"
    closes_connection = True


class Pipelined(BadRequest):
    """The raw server serves the data plane and aiohttp the server's own routes; a connection
    passes between them only between requests, so one pipelined behind a request of the other
    kind cannot be served."""

    closes_connection = True


def pipelined(what: str, behind: str) -> Pipelined:
    return Pipelined(
        f"{what} cannot be pipelined behind {behind}: send it on its own connection, or wait for the previous response"
    )


class EndpointPaused(ProxyError):
    status, cause = 400, "paused"


class Unauthorized(ProxyError):
    status, cause = 401, "unauthorized"


class Forbidden(ProxyError):
    status, cause = 403, "forbidden"


class NotFound(ProxyError):
    status, cause = 404, "not_found"


class RequestTimeout(ProxyError):
    status, cause = 408, "request_timeout"
    closes_connection = True


class PayloadTooLarge(ProxyError):
    status, cause = 413, "payload_too_large"


class RateLimited(ProxyError):
    """A rate limit (proxy/core/ratelimit.py) is reached: whose (`namespace`) and which (`limit`,
    e.g. "token_rpm"), for /metrics."""

    status, cause = 429, "rate_limited"

    def __init__(self, message: str, *, namespace: str, limit: str, retry_after_s: int):
        super().__init__(message, retry_after_s=retry_after_s)
        self.namespace = namespace
        self.limit = limit


class HeadersTooLarge(ProxyError):
    status, cause = 431, "headers_too_large"


class UpstreamFailed(ProxyError):
    status, cause = 502, "upstream_failed"


class Unavailable(ProxyError):
    status, cause = 503, "unavailable"


class UpstreamTimeout(ProxyError):
    status, cause = 504, "upstream_timeout"


# The HTTP parsers' limits (aiohttp's defaults, set explicitly, and the raw server's): a longer line
# or more headers is a 431.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 128


# The refusals of what an HTTP parser or the first look at a head cannot accept, one sentence each
# whichever server (proxy/raw/ for the data plane, aiohttp for the rest) met it.

def head_too_large() -> HeadersTooLarge:
    return HeadersTooLarge(
        f"the request head is too large: at most {MAX_HEADERS} headers of at most "
        f"{MAX_LINE_BYTES} bytes each, and a request line of at most {MAX_LINE_BYTES} bytes"
    )


def not_http(reason: str) -> BadRequest:
    return BadRequest(
        "the request is not valid HTTP/1.1" + (f" ({shown(reason, 200)})" if reason else "")
        + "; fix the client or what sits between it and this server"
    )


def not_a_path(target: str) -> BadRequest:
    return BadRequest(f"the request target {quoted(target)} is not a path: send a path starting with '/'")


def chunked_http10() -> BadRequest:
    return BadRequest("an HTTP/1.0 request cannot have Transfer-Encoding; send Content-Length, or use HTTP/1.1")


def header_safe(text: str, limit: int = MAX_HEADER_MESSAGE) -> str:
    """`text` as a header value that cannot break a response: anything but printable ASCII
    (control characters, CR/LF, non-ASCII, undecodable bytes) becomes '?', and it is cut to
    `limit` characters."""
    safe = _UNSAFE.sub("?", text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def shown(value: str, limit: int = MAX_QUOTED_INPUT) -> str:
    """Caller input as it may appear in an error sentence: printable ASCII, bounded."""
    cut = value if len(value) <= limit else value[:limit] + "..."
    return _UNSAFE.sub("?", cut)


def quoted(value: str, limit: int = MAX_QUOTED_INPUT) -> str:
    return f"'{shown(value, limit)}'"


def openai_route(path: str | None) -> bool:
    """Whether the request target is an endpoint's OpenAI route."""
    return path is not None and _OPENAI_ROUTE.match(path) is not None


def to_http(error: ProxyError, path: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body for a refusal of a request for `path` (its raw target, when
    known); the one place errors become HTTP."""
    headers = {"Content-Type": "application/json", ERROR_MESSAGE: header_safe(error.message)}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="endpointd"'
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    body: dict[str, object]
    if openai_route(path):
        body = {"error": {"message": error.message, "type": error.cause, "code": error.status}}
    else:
        body = {"error": error.message}
    return error.status, headers, json.dumps(body).encode()
