"""Which endpoint a request is for, and the path its replica sees (the endpoint prefix stripped).

The path is the raw request target, still percent-encoded: what follows the prefix reaches the
replica byte for byte (`%2e%2e`, `%2f`, `//`, `;` included). Only origin-form targets (starting
with '/') are served: an absolute URL (a forward-proxy request) or '*' is a 400.
"""

from __future__ import annotations

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


def resolve(control: ControlPlane, host: str | None, raw_path: str) -> tuple[RouteEntry, str]:
    """The routing entry and upstream path; Host-based routing wins over the path prefix."""
    if not raw_path.startswith("/"):
        raise not_a_path(raw_path)
    if host:
        entry = control.lookup_host(host)
        if entry is not None:
            return entry, raw_path
    parts = split_path(raw_path)
    if parts is not None:
        namespace, name, tail = parts
        entry = control.lookup(namespace, name)
        if entry is not None:
            return entry, tail
        raise NotFound(
            f"endpoint {shown(namespace + '/' + name)} does not exist; check the namespace and name in the URL"
        )
    raise NotFound(f"no endpoint at {quoted(raw_path.partition('?')[0])}; endpoint URLs look like /endpoints/NAMESPACE/NAME/...")
