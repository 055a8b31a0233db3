"""Log line cleaning and secret masking: what a terminal would show of a raw line, valid UTF-8,
cut at `log_max_line_bytes`; and every secret value (as is, percent-encoded, JSON-escaped)
replaced by ***. A line is masked before it is cut, so that a secret at the cut is masked whole."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable

# Secret values shorter than this are not masked: replacing every "abc" or "true" would wreck the
# log, and the pattern of what got masked would itself tell the value.
MIN_SECRET_CHARS = 4
MASK = "***"
CUT_SUFFIX = "…"

def clean(raw: str, max_bytes: int) -> str:
    """One stored line: what a terminal would show of it (the part after the last carriage return:
    a progress bar's last state), without NULs, valid UTF-8, cut at `max_bytes` bytes."""
    line = raw.rstrip("\r")
    if "\r" in line:
        line = line.rsplit("\r", 1)[1]
    if "\x00" in line:
        line = line.replace("\x00", "\ufffd")
    try:
        data = line.encode()
    except UnicodeEncodeError:  # lone surrogates from a lenient decoder: SQLite refuses them
        data = line.encode("utf-8", "replace")
        line = data.decode()
    if len(data) > max_bytes:
        room = max_bytes - len(CUT_SUFFIX.encode())
        line = data[:room].decode("utf-8", "ignore") + CUT_SUFFIX
    return line


def secret_forms(value: str) -> set[str]:
    """The ways a secret's value shows up in a log: as is, percent-encoded (a URL, a query string)
    and JSON-escaped (a request body echoed back)."""
    if len(value) < MIN_SECRET_CHARS:
        return set()
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), json.dumps(value)[1:-1]}


class Masker:
    """Replaces every secret value (in each of its forms) by ***. Longer values first, so that a
    secret containing another is masked whole."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {form for value in secrets if isinstance(value, str) for form in secret_forms(value)}
        self.secrets = frozenset(forms)
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, line: str) -> str:
        return self._pattern.sub(MASK, line) if self._pattern is not None else line
