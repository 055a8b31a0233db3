"""Quotas per namespace, as pure arithmetic: what a namespace may hold (`Quota`), what it holds
(`Use`), and the two rules every write and every scale-up asks.

- `refusal(quota, use, asked)`: an endpoint create or update that could never fit is refused at
  the API, with a sentence that names the quota, what is in use and what was asked;
- `replicas_fitting(quota, use, need)`: how many more replicas of one endpoint fit now; a
  scale-up starts no more than that, and `holding(...)` says which quota holds the rest.

A replica counts while it holds anything (starting, ready, sleeping, draining, stopping); a parked
replica (its container stopped) and a paused or scaled-to-zero endpoint hold nothing. An endpoint
counts toward `endpoints` for as long as it exists. An org's namespace is a namespace like any
other: its quota bounds the sum of what its endpoints hold, whoever of its members made them.

Each limit is a number or None (unlimited). CPUs may be fractional; GPUs, memory (bytes),
replicas and endpoints are whole numbers. Floating-point sums of CPUs are compared with a margin
(`EPSILON`), as engines/capacity.py does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from engines.capacity import Need
from engines.errors import EndpointdError

EPSILON = 1e-9
KIB = 1024
# The units `memory` takes, besides bare bytes: binary ones only ("GB" would be ambiguous).
UNITS = {"B": 1, "KiB": KIB, "MiB": KIB**2, "GiB": KIB**3, "TiB": KIB**4}
# Sane maxima: far above any one host, low enough that no sum overflows or loses precision.
MAXIMA: dict[str, int] = {"gpus": 1024, "cpus": 65536, "memory": 2**50, "replicas": 100_000, "endpoints": 100_000}
MAX_TEXT = 32  # characters of a memory string; "1125899906842624 B" is 18


class QuotaError(EndpointdError, ValueError):
    """A quota value that is not a number in range, or a key that is no limit."""

    status = 400


@dataclass(frozen=True)
class Use:
    """What a namespace holds (or one replica needs, or a write asks): the same fields as a Quota."""

    gpus: int = 0
    cpus: float = 0.0
    memory_bytes: int = 0
    replicas: int = 0
    endpoints: int = 0

    def __add__(self, other: Use) -> Use:
        return Use(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def times(self, n: int) -> Use:
        return Use(self.gpus * n, self.cpus * n, self.memory_bytes * n, self.replicas * n, self.endpoints * n)


@dataclass(frozen=True)
class Quota:
    """The most a namespace may hold; None is unlimited."""

    gpus: int | None = None
    cpus: float | None = None
    memory_bytes: int | None = None
    replicas: int | None = None
    endpoints: int | None = None

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


# (field, wire key, one unit, many units): the order in which limits are checked and shown.
LIMITS = (
    ("endpoints", "endpoints", "endpoint", "endpoints"),
    ("replicas", "replicas", "replica", "replicas"),
    ("gpus", "gpus", "GPU", "GPUs"),
    ("cpus", "cpus", "CPU", "CPUs"),
    ("memory_bytes", "memory", "", ""),
)
KEYS = tuple(key for _, key, _, _ in LIMITS)
# The limits on what replicas hold, which bound a scale-up (endpoints bound only a create).
HELD = ("replicas", "gpus", "cpus", "memory_bytes")


def per_replica(need: Need) -> Use:
    """What one replica of an endpoint holds, from what the launcher says it needs."""
    return Use(gpus=need.gpus, cpus=need.cpus, memory_bytes=need.memory_bytes, replicas=1)


def amount(name: str, value: float) -> str:
    """`value` of the field `name` in words: "2 GPUs", "1.5 CPUs", "32 GiB", "1 endpoint"."""
    if name == "memory_bytes":
        return memory_text(int(value))
    _, _, one, many = next(limit for limit in LIMITS if limit[0] == name)
    return f"{value:g} {one if value == 1 else many}"


def memory_text(n: int) -> str:
    """Bytes in the largest unit that shows them well: "32 GiB", "1.5 GiB", "512 MiB", "100 B"."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n >= UNITS[unit]:
            return f"{round(n / UNITS[unit], 2):g} {unit}"
    return f"{n} B"


def refusal(quota: Quota, use: Use, asked: Use, namespace: str = "the namespace") -> str | None:
    """Why a write asking `asked` on top of `use` can never fit `quota`, or None when it fits.

    Only what the write asks is checked: a limit it asks nothing of (an update asks no endpoint)
    refuses nothing, even when what is in use already passes it (an admin lowered the quota)."""
    for name, _, _, _ in LIMITS:
        limit, used, wants = getattr(quota, name), getattr(use, name), getattr(asked, name)
        if limit is None or wants <= 0 or used + wants <= limit + EPSILON:
            continue
        return (f"namespace {namespace}'s quota of {amount(name, limit)} cannot fit it: {amount(name, used)} "
                f"in use and it asks for {amount(name, wants)} more")
    return None


def replicas_fitting(quota: Quota, use: Use, need: Use) -> int | None:
    """How many more replicas, each needing `need`, fit `quota` on top of `use` (0 when none
    does, even if what is in use already passes the quota); None when no limit bounds them."""
    counts = [_fitting(getattr(quota, name), getattr(use, name), getattr(need, name)) for name in HELD]
    bounded = [count for count in counts if count is not None]
    return min(bounded) if bounded else None


def _fitting(limit: float | None, used: float, each: float) -> int | None:
    if limit is None or each <= 0:
        return None
    if isinstance(limit, int) and isinstance(used, int) and isinstance(each, int):
        return max(0, (limit - used) // each)  # GPUs, bytes, counts: exact, no rounding to trust
    # CPUs (fractions): the count the division gives, less one if it rounded up past the limit.
    count = max(0, math.floor((limit - used) / each + EPSILON))
    return count - 1 if count and used + count * each > limit + EPSILON else count


def holding(quota: Quota, use: Use, need: Use, namespace: str, what: str = "a replica") -> str:
    """The limit that bounds the next replicas most, for status messages: "… is reached" when it
    leaves room for none, with what is in use and what `what` needs ("" when none bounds them)."""
    bounds = [(count, name) for name in HELD
              if (count := _fitting(getattr(quota, name), getattr(use, name), getattr(need, name))) is not None]
    if not bounds:
        return ""
    count, name = min(bounds, key=lambda bound: bound[0])
    limit, used, each = getattr(quota, name), getattr(use, name), getattr(need, name)
    state = "is reached" if count == 0 else f"leaves room for {amount('replicas', count)}"
    said = f"namespace {namespace}'s quota of {amount(name, limit)} {state} ({amount(name, used)} in use"
    if name == "replicas":
        return f"{said})"
    return f"{said} by {amount('replicas', use.replicas)}; {what} needs {amount(name, each)})"


# --- reading limits: the API's JSON and the CLI's flags take the same keys and ranges ------------


def parse(body: Any) -> Quota:
    """A Quota from a JSON object of limits (`gpus`, `cpus`, `memory`, `replicas`, `endpoints`);
    a key absent or null is unlimited. `memory` is bytes or a string with a unit ("32GiB")."""
    if not isinstance(body, dict):
        raise QuotaError(f"a quota is a JSON object with any of the keys {', '.join(KEYS)}")
    unknown = sorted(str(key) for key in body if key not in KEYS)
    if unknown:
        raise QuotaError(f"{unknown[0][:64]!r} is not a quota limit; the limits are: {', '.join(KEYS)}")
    return Quota(**{name: limit(key, body.get(key)) for name, key, _, _ in LIMITS})


def limit(key: str, value: Any) -> Any:
    """One limit checked: None, or a number in [0, MAXIMA[key]] (a whole one but for cpus)."""
    if value is None:
        return None
    if key == "memory" and isinstance(value, str):
        value = memory_bytes(value)
    top = MAXIMA[key]
    whole = "a whole number" if key != "cpus" else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise QuotaError(f"quota {key} must be {whole} from 0 to {top}"
                         f"{' (or a size such as 32GiB)' if key == 'memory' else ''} or null (unlimited); "
                         f"got {str(value)[:64]!r}")
    if key != "cpus" and value != int(value):
        raise QuotaError(f"quota {key} must be a whole number; got {value:g}")
    if not 0 <= value <= top:
        shown = memory_text(top) if key == "memory" else f"{top}"
        raise QuotaError(f"quota {key} must be from 0 to {shown}; got {value:g}")
    return float(value) if key == "cpus" else int(value)


def memory_bytes(text: str) -> int:
    """"32GiB", "1.5 TiB", "512MiB", "4096" (bytes) -> bytes; QuotaError when it is none of those."""
    raw = text.strip()
    unit = next((u for u in sorted(UNITS, key=len, reverse=True) if raw.lower().endswith(u.lower())), "")
    number = raw[:len(raw) - len(unit)].strip() if unit else raw
    bad = QuotaError(f"quota memory {text[:MAX_TEXT]!r} is not a size: a number of bytes, or a number with one of "
                     f"the units {', '.join(u for u in UNITS if u != 'B')} (e.g. 32GiB)")
    if len(text) > MAX_TEXT or not number or not all(c.isdigit() or c == "." for c in number) or number.count(".") > 1:
        raise bad
    try:
        value = float(number) * UNITS[unit or "B"]
    except ValueError:
        raise bad from None
    if value != int(value):
        raise QuotaError(f"quota memory {text!r} is not a whole number of bytes")
    return int(value)


def to_json(quota: Quota) -> dict[str, Any]:
    """The wire form: every key, null where unlimited; cpus as an integer when it is one."""
    return {key: _number(getattr(quota, name)) for name, key, _, _ in LIMITS}


def use_json(use: Use) -> dict[str, Any]:
    return {key: _number(getattr(use, name)) for name, key, _, _ in LIMITS}


def _number(value: float | None) -> Any:
    if isinstance(value, float) and value == int(value) and abs(value) < 2**53:
        return int(value)
    return value
