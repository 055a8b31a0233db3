"""A stored log line and its text form: `{time} {replica} {text}`, the time in RFC 3339 UTC."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LogLine:
    id: int  # increasing in collection order, as `at_ms` is: (at_ms, id) is the order of lines
    at_ms: int  # when it was collected, unix milliseconds (UTC)
    replica: str
    text: str


def format_time(at_ms: int) -> str:
    """RFC 3339, UTC, milliseconds: `2025-01-02T03:04:05.678Z` (fixed width)."""
    seconds, ms = divmod(at_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def format_line(line: LogLine, max_length: int | None = None) -> str:
    """`{time} {replica} {text}`, the text cut to `max_length` characters when given."""
    text = line.text if max_length is None else line.text[:max_length]
    return f"{format_time(line.at_ms)} {line.replica} {text}"
