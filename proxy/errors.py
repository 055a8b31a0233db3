"""The proxy's refusals and failures, one exception each, and their one mapping to HTTP.

    ProxyError                  root; `status`, `cause` (metric label) and a sentence for the caller
      BadRequest          400   e.g. a malformed X-Scale-Up-Timeout
      EndpointPaused      400   paused by a user; only `resume` brings it back (reference behaviour)
      Unauthorized        401   no token, or one we do not know (with WWW-Authenticate: Bearer)
      Forbidden           403   a valid token without access to the endpoint's namespace
      NotFound            404   no such endpoint
      PayloadTooLarge     413   request body over the configured limit
      UpstreamFailed      502   the replica could not be reached, or broke the response
      Unavailable         503   no replica now: cold start, hold expired, hold queue full, failed
      UpstreamTimeout     504   the replica sent no response headers within the response-start
                                timeout, or stopped sending for longer than the idle timeout
"""

from __future__ import annotations

import json


class ProxyError(Exception):
    status = 500
    cause = "internal"

    def __init__(self, message: str, *, cause: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        if cause is not None:
            self.cause = cause
        self.retry_after_s = retry_after_s


class BadRequest(ProxyError):
    status, cause = 400, "bad_request"


class EndpointPaused(ProxyError):
    status, cause = 400, "paused"


class Unauthorized(ProxyError):
    status, cause = 401, "unauthorized"


class Forbidden(ProxyError):
    status, cause = 403, "forbidden"


class NotFound(ProxyError):
    status, cause = 404, "not_found"


class PayloadTooLarge(ProxyError):
    status, cause = 413, "payload_too_large"


class UpstreamFailed(ProxyError):
    status, cause = 502, "upstream_failed"


class Unavailable(ProxyError):
    status, cause = 503, "unavailable"


class UpstreamTimeout(ProxyError):
    status, cause = 504, "upstream_timeout"


def to_http(error: ProxyError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body for a refusal; the one place errors become HTTP."""
    headers = {"Content-Type": "application/json"}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="endpointd"'
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return error.status, headers, json.dumps({"error": error.message}).encode()
