"""Which endpoint a request is for, and the path its replica sees (the endpoint prefix stripped).

The path is the raw request target, still percent-encoded: what follows the prefix reaches the
replica byte for byte (`%2e%2e`, `%2f`, `//`, `;` included). Only origin-form targets (starting
with '/') are served: an absolute URL (a forward-proxy request) or '*' is a 400.
"""

from __future__ import annotations

from dataclasses import dataclass

from .control import ControlPlane, RouteEntry
from .errors import NotFound, not_a_path, quoted, shown

PREFIX = "/endpoints/"


def split_path(raw_path: str) -> tuple[str, str, str] | None:
    """`/endpoints/{ns}/{name}/rest?q` -> (ns, name, "/rest?q"); None if not an endpoint path.

    Works on the raw (still percent-encoded) path so the replica sees exactly what was sent.
    """
    if not raw_path.startswith(PREFIX):
        return None
    rest = raw_path[len(PREFIX):]
    namespace, sep, rest = rest.partition("/")
    if not sep or not namespace:
        return None
    cut = len(rest)
    for stop in "/?":
        i = rest.find(stop)
        if i != -1 and i < cut:
            cut = i
    name, tail = rest[:cut], rest[cut:]
    if not name:
        return None
    if not tail.startswith("/"):
        tail = "/" + tail
    return namespace, name, tail


@dataclass(frozen=True, slots=True)
class Route:
    """Where a data-plane request goes: its endpoint and the path its replica sees, or (`entry`
    None) the refusal of a path under PREFIX that names no endpoint."""

    entry: RouteEntry | None
    upstream_path: str
    refusal: NotFound | None = None


def nowhere(raw_path: str) -> NotFound:
    return NotFound(f"no endpoint at {quoted(raw_path.partition('?')[0])}; endpoint URLs look like /endpoints/NAMESPACE/NAME/...")


def route(control: ControlPlane, host: str | None, raw_path: str) -> Route | None:
    """The one routing step: None when the request is not for the data plane (its Host is no
    endpoint's route domain and its path is not under PREFIX); Host-based routing wins over the
    path prefix."""
    if host:
        entry = control.lookup_host(host)
        if entry is not None:
            return Route(entry, raw_path)
    if not raw_path.startswith(PREFIX):
        return None
    parts = split_path(raw_path)
    if parts is None:
        return Route(None, raw_path, nowhere(raw_path))
    namespace, name, tail = parts
    entry = control.lookup(namespace, name)
    if entry is None:
        return Route(None, raw_path, NotFound(
            f"endpoint {shown(namespace + '/' + name)} does not exist; check the namespace and name in the URL"
        ))
    return Route(entry, tail)


def resolve(control: ControlPlane, host: str | None, raw_path: str) -> tuple[RouteEntry, str]:
    """`route` for a request of any target: the entry and upstream path, or the refusal raised."""
    if not raw_path.startswith("/"):
        raise not_a_path(raw_path)
    found = route(control, host, raw_path)
    if found is None:
        raise nowhere(raw_path)
    if found.entry is None:
        assert found.refusal is not None
        raise found.refusal
    return found.entry, found.upstream_path
