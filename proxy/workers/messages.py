"""What the main process and its workers tell each other over the channel (channel.py), one
frozen dataclass per kind; codec.py is the one place that turns them into JSON and back.

A worker opens with `Hello` and gets `Welcome` (its settings, the route table and the rate
limits' overrides whole); then every route change comes as `RouteChanged` or `RouteRemoved`, every
override as `LimitsChanged`. Back go its token checks (`Verify`, answered by `Verified`), its
rate-limit admissions (`Admit`, answered by `Admitted`; `Release` when an admitted request that
holds in-flight counts ends), its wakes, its pending counts, its tapped answers, `Ready` once it
listens, and its metric families when `AskFamilies` asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import ProxyConfig
from ..core.control import Identity, RouteEntry
from ..core.limits import Override
from ..core.metrics import Answers, Family
from ..core.pending import PendingSnapshot
from ..core.ratelimit import Refusal

# -- from a worker to the main process ------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    worker: str


@dataclass(frozen=True)
class Ready:
    """The worker listens on the port."""


@dataclass(frozen=True)
class Counts:
    snapshot: PendingSnapshot  # the worker's own counts, whole


@dataclass(frozen=True)
class Verify:
    id: int
    token: str


@dataclass(frozen=True)
class Admit:
    """Admit a request under the rate limits (the main process keeps their counters)."""

    id: int
    namespace: str  # the endpoint's
    token: str | None  # the bearer token's digest; None: no token limit applies


@dataclass(frozen=True)
class Release:
    """The request admitted by Admit `id` has ended (or its admission was given up): what it holds is free."""

    id: int


@dataclass(frozen=True)
class Wake:
    namespace: str
    name: str


@dataclass(frozen=True)
class TappedAnswers:
    answers: dict[str, Answers]  # per endpoint key, since the last ones sent


@dataclass(frozen=True)
class Families:
    id: int  # the AskFamilies answered
    families: list[Family]


ToMain = Hello | Ready | Counts | Verify | Admit | Release | Wake | TappedAnswers | Families

# -- from the main process to a worker ------------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    config: ProxyConfig
    port: int  # the main listener's bound port, which the worker shares
    probe_secret: str | None
    entries: tuple[RouteEntry, ...]
    tap: bool  # keep answers for the analytics tap
    handoff: str  # the path of the hand-off socket (handoff.py)
    overrides: tuple[tuple[str, Override], ...] = ()  # the rate limits' per-namespace overrides


@dataclass(frozen=True)
class RouteChanged:
    entry: RouteEntry


@dataclass(frozen=True)
class RouteRemoved:
    namespace: str
    name: str


@dataclass(frozen=True)
class Verified:
    id: int  # the Verify answered
    identity: Identity | None


@dataclass(frozen=True)
class Admitted:
    id: int  # the Admit answered
    refusal: Refusal | None  # None: admitted
    held: bool  # in-flight counts are held for it until its Release


@dataclass(frozen=True)
class LimitsChanged:
    namespace: str
    override: Override | None  # None: back to the defaults


@dataclass(frozen=True)
class AskFamilies:
    id: int


ToWorker = Welcome | RouteChanged | RouteRemoved | Verified | Admitted | LimitsChanged | AskFamilies

Message = ToMain | ToWorker
