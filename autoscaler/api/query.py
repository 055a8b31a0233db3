"""Query parameters of the read routes (logs, events, audit, series): bounded integers and times,
each refused with a 400 that names the parameter and what it must be."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import overload

from aiohttp import web

from autoscaler.api.base import Invalid

# Times before this or after MAX_UNIX_S are surely a mistake (and would overflow datetime).
MAX_UNIX_S = 253402300799  # 9999-12-31T23:59:59Z


@overload
def integer(request: web.Request, name: str, *, lo: int, hi: int, default: int) -> int: ...
@overload
def integer(request: web.Request, name: str, *, lo: int, hi: int, default: None = None) -> int | None: ...
def integer(request: web.Request, name: str, *, lo: int, hi: int, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise Invalid(f"query parameter {name} must be an integer between {lo} and {hi}; got {raw[:40]!r}")
    return value


def moment(request: web.Request, name: str) -> datetime | None:
    """An RFC 3339 time (`2026-12-02T10:00:00Z`) or unix seconds; None when absent."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    else:
        if math.isfinite(seconds) and 0 <= seconds <= MAX_UNIX_S:
            return datetime.fromtimestamp(seconds, UTC)
    raise Invalid(
        f"query parameter {name} must be an RFC 3339 time such as 2026-12-02T10:00:00Z or unix seconds; got {raw[:40]!r}"
    )


def text(request: web.Request, name: str, *, max_length: int = 200) -> str | None:
    raw = request.query.get(name)
    if raw is not None and len(raw) > max_length:
        raise Invalid(f"query parameter {name} must be at most {max_length} characters")
    return raw or None
