"""Times as the API reads and writes them: one parser for every query parameter that takes a time
(`since`, `until`, `from`, `to`), and the one form every answer writes.

A time is either unix seconds (`1750000000`, `1750000000.5`) or RFC 3339 with a time zone
(`2025-06-15T15:06:40Z`, `…40.123+02:00`, a lowercase `t` or `z` too), from 1970-01-01T00:00:00Z
to 9999-12-31T23:59:59Z in either form. The parser raises a `BadTime` saying why; each route
turns it into its own 400 sentence, naming its parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from engines.errors import EndpointdError

MAX_UNIX_S = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second RFC 3339 (and datetime) can write
MAX_LENGTH = 40  # characters; the longest RFC 3339 time with nanoseconds and an offset is 35
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST = datetime.fromtimestamp(MAX_UNIX_S, UTC)


class BadTime(EndpointdError, ValueError):
    """The text is not a time the API takes."""


class NotATime(BadTime):
    """Neither unix seconds nor RFC 3339 (or longer than any time is written)."""


class NoTimeZone(BadTime):
    """RFC 3339 without `Z` or an offset: the instant it names is unknown."""


class OutOfRange(BadTime):
    """A time before 1970 or after 9999-12-31T23:59:59Z."""


def parse_time(raw: str) -> datetime:
    """The instant `raw` names, in UTC; surrounding blanks are ignored."""
    text = raw.strip()
    if len(text) > MAX_LENGTH:
        raise NotATime(f"{raw[:64]!r} is longer than any time")
    try:
        seconds = Decimal(text)  # exact, so that `1750000000.123` is that millisecond, not the float below it
    except InvalidOperation:
        return _rfc3339(text)
    if not (seconds.is_finite() and 0 <= seconds <= MAX_UNIX_S):
        raise OutOfRange(f"unix seconds must be between 0 and {MAX_UNIX_S}; got {text!r}")
    return EPOCH + timedelta(microseconds=round(seconds * 1_000_000))


def _rfc3339(text: str) -> datetime:
    if "T" not in text.upper():  # a date alone, or a space between date and time
        raise NotATime(f"{text!r} is not RFC 3339: the date and time are joined by T")
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise NotATime(f"{text!r} is not RFC 3339") from None
    if moment.tzinfo is None:
        raise NoTimeZone(f"{text!r} has no time zone")
    if not EPOCH <= moment <= LAST:  # compared as instants, so no offset can overflow
        raise OutOfRange(f"{text!r} is before 1970 or after 9999-12-31T23:59:59Z")
    return moment.astimezone(UTC)


def unix_ms(moment: datetime) -> int:
    """Whole milliseconds since 1970 (exact: no float on the way)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def wire_time(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ`, fixed width so text order is time order; the client rejects `+00:00` (docs/wire-format.md §7)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
