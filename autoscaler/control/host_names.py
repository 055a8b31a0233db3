"""The DNS names this host answers to, found once at start: no endpoint may take one as its
`route.domain`, since a management call sent by that name would then reach a tenant's engine.

Not a fixed list: the host name, its FQDN and canonical name with their aliases, and the reverse
name (and aliases) of every local address — each interface's IPv4 and IPv6 addresses
(`/proc/net/fib_trie`, `/proc/net/if_inet6`) and what the host name resolves to. Names are
lower-case, without a trailing dot.

Resolvers can be slow or hang, so every look-up runs in a daemon thread and the whole search
stops after `deadline_s`: whatever answered by then is kept, a start is never stalled.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("endpointd.host_names")

# Time all look-ups together may take at start (a healthy resolver answers in milliseconds).
RESOLVE_DEADLINE_S = 3.0
# Local addresses looked up at most: real hosts have a few; a host with thousands of Docker
# networks must not start thousands of threads.
MAX_ADDRESSES = 64
FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")


def normal(name: str) -> str:
    """A name as it is compared: lower-case, no trailing dot."""
    return name.strip().lower().rstrip(".")


def local_addresses(fib_trie: Path = FIB_TRIE, if_inet6: Path = IF_INET6) -> list[str]:
    """Every address of this host's interfaces (Linux's views of them), link-local IPv6 left out
    (a reverse look-up of those needs a scope)."""
    found: list[str] = []
    try:
        last = None
        for line in fib_trie.read_text().splitlines():
            text = line.strip()
            if text.startswith("|-- "):
                last = text[4:]
            elif last and text.endswith("host LOCAL"):
                found.append(last)
    except OSError:
        pass
    try:
        for line in if_inet6.read_text().splitlines():
            fields = line.split()
            if not fields or len(fields[0]) != 32:
                continue
            address = ipaddress.IPv6Address(int(fields[0], 16))
            if not address.is_link_local:
                found.append(str(address))
    except (OSError, ValueError):
        pass
    return list(dict.fromkeys(found))


def _bounded(calls: Iterable[Callable[[], Any]], deadline: float) -> list[Any]:
    """The results of the calls that returned by `deadline` (each in a daemon thread; one that
    raises or is still running is left out)."""
    results: list[Any] = []
    lock = threading.Lock()

    def run(call: Callable[[], Any]) -> None:
        try:
            value = call()
        except (OSError, UnicodeError, ValueError):
            return
        with lock:
            results.append(value)

    threads = [threading.Thread(target=run, args=(call,), daemon=True, name="host names") for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return list(results)


def names_of_this_host(deadline_s: float = RESOLVE_DEADLINE_S, *, resolver: Any = socket,
                       addresses: Callable[[], list[str]] = local_addresses) -> frozenset[str]:
    """The names this host answers to (see the module docstring); `resolver` is the `socket`
    module's look-ups, replaceable in tests."""
    deadline = time.monotonic() + deadline_s
    hostname = resolver.gethostname()
    names = {hostname}
    local = list(addresses())
    for found in _bounded([resolver.getfqdn, lambda: resolver.gethostbyname_ex(hostname)], deadline):
        if isinstance(found, str):
            names.add(found)
        else:  # (canonical name, aliases, addresses)
            names.update([found[0], *found[1]])
            local.extend(found[2])
    local = list(dict.fromkeys(local))
    if len(local) > MAX_ADDRESSES:
        log.warning("this host has %d local addresses; the reverse names of the first %d are refused as "
                    "route domains", len(local), MAX_ADDRESSES)
    lookups = [lambda a=a: resolver.gethostbyaddr(a) for a in local[:MAX_ADDRESSES]]
    for name, aliases, _ in _bounded(lookups, deadline):
        names.update([name, *aliases])
    if time.monotonic() >= deadline:
        log.warning("resolving this host's own names took over %.0f s; names not found by then are not refused "
                    "as route domains (set external_url, and check the resolver)", deadline_s)
    return frozenset(n for n in map(normal, names) if n)
