"""Query parameters of the read routes (logs, events, audit, series): bounded integers and times,
each refused with a 400 that names the parameter and what it must be."""

from __future__ import annotations

from datetime import datetime
from typing import overload

from aiohttp import web

from autoscaler.api.base import Invalid
from autoscaler.model.times import BadTime, parse_time


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
    """An RFC 3339 time with a time zone (`2026-12-02T10:00:00Z`) or unix seconds; None when absent."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_time(raw)
    except BadTime:
        raise Invalid(
            f"query parameter {name} must be an RFC 3339 time such as 2026-12-02T10:00:00Z or unix seconds; got {raw[:40]!r}"
        ) from None


def text(request: web.Request, name: str, *, max_length: int = 200) -> str | None:
    raw = request.query.get(name)
    if raw is not None and len(raw) > max_length:
        raise Invalid(f"query parameter {name} must be at most {max_length} characters")
    return raw or None
