"""Properties of the one time parser (autoscaler/model/times.py) that replaced three: every time
in range reads back as itself in either form, everything else is a BadTime, and where the three
old parsers agreed it agrees with them. The old parsers are kept below as oracles, as they stood
in api/query.py, api/metrics.py and api/logs.py, each reduced to "instant in unix ms, or None"."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.model.times import EPOCH, LAST, MAX_UNIX_S, BadTime, OutOfRange, parse_time, unix_ms, wire_time
from tests.examples import examples

EXAMPLES = settings(max_examples=examples(150), deadline=None)

OFFSETS = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60 - 59, 23 * 60 + 59))
IN_RANGE = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS)
BEFORE = st.datetimes(max_value=datetime(1969, 12, 30), timezones=OFFSETS)
AFTER = st.datetimes(min_value=datetime(9999, 12, 31, 23, 59, 59, 1), timezones=st.just(UTC))


@EXAMPLES
@given(IN_RANGE)
def test_any_time_in_range_reads_back_as_itself(moment):
    assert parse_time(moment.isoformat()) == moment
    assert parse_time(moment.isoformat().replace("T", "t").replace("+00:00", "z")) == moment
    assert parse_time(wire_time(moment)) == moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    seconds = int(moment.timestamp())
    assert parse_time(str(seconds)) == datetime.fromtimestamp(seconds, UTC)
    assert unix_ms(parse_time(str(seconds))) == seconds * 1000
    assert parse_time(moment.isoformat()).tzinfo is UTC


@EXAMPLES
@given(st.integers(0, MAX_UNIX_S - 1), st.integers(0, 999))
def test_unix_seconds_in_range_are_taken_to_the_millisecond(seconds, ms):
    assert unix_ms(parse_time(f" {seconds}.{ms:03d} ")) == seconds * 1000 + ms


@EXAMPLES
@given(BEFORE | AFTER)
def test_a_time_outside_1970_to_9999_is_out_of_range_in_either_form(moment):
    text = moment.isoformat()
    try:
        parse_time(text)
    except OutOfRange:
        pass
    else:
        raise AssertionError(f"{text} was taken")


@EXAMPLES
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda s: not 0 <= s <= MAX_UNIX_S))
def test_unix_seconds_outside_the_range_are_out_of_range(seconds):
    try:
        parse_time(repr(seconds))
    except OutOfRange:
        return
    raise AssertionError(f"{seconds!r} was taken")


def test_the_bounds_themselves_are_times():
    assert parse_time("0") == EPOCH == parse_time("1970-01-01T00:00:00Z")
    assert parse_time(str(MAX_UNIX_S)) == LAST == parse_time("9999-12-31T23:59:59Z")


# --- the three parsers this one replaced ---------------------------------------------------------


def old_query(raw: str) -> int | None:
    """api/query.py: a naive time was read as UTC; unix seconds up to 9999."""
    try:
        seconds = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        return round(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp() * 1000)
    return round(seconds * 1000) if math.isfinite(seconds) and 0 <= seconds <= 253402300799 else None


def old_metrics(raw: str) -> int | None:
    """api/metrics.py: unix seconds up to 1e11; any ISO time with a zone."""
    try:
        value = float(raw)
    except ValueError:
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return None if moment.tzinfo is None else round(moment.timestamp() * 1000)
    return round(value * 1000) if math.isfinite(value) and 0 <= value <= 1e11 else None


def old_logs(raw: str) -> int | None:
    """api/logs.py: stripped, at most 40 characters, a T, a zone; before 1970 clamped to 0."""
    text = raw.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        return int(seconds * 1000) if math.isfinite(seconds) and 0 <= seconds <= 253402300799 else None
    if len(text) > 40:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return None
    if moment.tzinfo is None or "T" not in text.upper():
        return None
    try:
        return max(0, int(moment.astimezone(UTC).timestamp() * 1000))
    except OverflowError:  # it answered 500 here
        return None


def new(raw: str) -> int | None:
    try:
        return unix_ms(parse_time(raw))
    except BadTime:
        return None


CANDIDATES = st.one_of(
    IN_RANGE.map(datetime.isoformat),
    IN_RANGE.map(wire_time),
    IN_RANGE.map(lambda d: d.replace(tzinfo=None).isoformat()),  # naive
    (BEFORE | AFTER).map(lambda d: d.replace(tzinfo=None).isoformat() + "Z"),
    st.integers(-10**12, 10**12).map(str),
    st.floats().map(repr),
    st.text(alphabet="0123456789-:.TtZz+ eE", max_size=30),
)


def close(a: int | None, b: int | None) -> bool:
    """The same instant, but for the millisecond the old parsers' float arithmetic could lose."""
    return a is not None and b is not None and abs(a - b) <= 1


@EXAMPLES
@given(CANDIDATES)
def test_where_the_old_parsers_agreed_the_new_one_agrees(raw):
    olds = [old_query(raw), old_metrics(raw), old_logs(raw)]
    got = new(raw)
    if all(o is None for o in olds):
        assert got is None, f"{raw!r}: every old parser refused it"
    elif all(close(o, olds[0]) for o in olds):
        if olds[0] >= MAX_UNIX_S * 1000:  # within 9999's last second: both forms now end where it starts
            assert got in (None, MAX_UNIX_S * 1000)
        else:
            assert close(got, olds[0]), f"{raw!r}: the old parsers all read {olds[0]}, this one {got}"


@EXAMPLES
@given(CANDIDATES)
def test_what_the_new_parser_takes_the_strictest_old_one_took_too(raw):
    # The logs' parser was the strictest of the three; the new one only refuses more (a time
    # before 1970, which it clamped, and the few it let overflow into a 500).
    got = new(raw)
    if got is not None:
        assert close(got, old_logs(raw)), raw


@EXAMPLES
@given(st.text(max_size=50))
def test_any_text_is_a_time_in_range_or_a_bad_time(raw):
    try:
        moment = parse_time(raw)
    except BadTime:
        return
    assert moment.tzinfo is UTC and EPOCH <= moment <= LAST
