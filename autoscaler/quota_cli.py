"""`endpointd quotas set|show|list|unset`: an admin's quotas per namespace, through a running
serve's `/v2/quotas` routes (so that the controller enforces a change at once, and it is audited).

`set` changes only the limits it is given and keeps the others (`--gpus none` lifts one);
`unset` lifts them all. Each limit is checked here as the server checks it (model/quotas.py), so a
bad value is refused before anything is sent.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from autoscaler.client import Client, ClientError
from autoscaler.model import quotas

# The limits, as flags and as the routes' keys, in the order shown.
FLAGS = ("gpus", "cpus", "memory", "replicas", "endpoints")
NONE = ("none", "unlimited")


def flag_value(key: str) -> Callable[[str], Any]:
    """An argparse type for the limit `key`: a number in range, or none (unlimited)."""

    def read(text: str) -> Any:
        if text.strip().lower() in NONE:
            return None
        value: Any = text
        if key != "memory" or text.strip().replace(".", "", 1).isdigit():
            try:
                value = float(text) if key == "cpus" or "." in text else int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number (or none, for unlimited)") from None
        try:
            return quotas.limit(key, value)
        except quotas.QuotaError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return read


def set_quota(client: Client, args: argparse.Namespace) -> list[str]:
    given = {key: getattr(args, key) for key in FLAGS if hasattr(args, key)}
    if not given:
        raise ClientError(f"give at least one limit: {', '.join('--' + key for key in FLAGS)}")
    path = f"/v2/quotas/{quote(args.namespace, safe='')}"
    current = client.json("GET", path)["quota"]
    return show_view(client.json("PUT", path, body={**current, **given}))


def show(client: Client, args: argparse.Namespace) -> list[str]:
    return show_view(client.json("GET", f"/v2/quotas/{quote(args.namespace, safe='')}"))


def unset(client: Client, args: argparse.Namespace) -> list[str]:
    client.json("DELETE", f"/v2/quotas/{quote(args.namespace, safe='')}")
    return [f"namespace {args.namespace} has no quota now: nothing bounds it but the host"]


def listing(client: Client, args: argparse.Namespace) -> list[str]:
    items = client.json("GET", "/v2/quotas")["items"]
    if not items:
        return ["no namespace has a quota"]
    lines = [f"{'NAMESPACE':<20}" + "".join(f"{key.upper():>16}" for key in FLAGS) + "   (in use / quota)"]
    for item in items:
        cells = [f"{_amount(key, item['use'][key])}/{_amount(key, item['quota'][key], '-')}" for key in FLAGS]
        lines.append(f"{item['namespace']:<20}" + "".join(f"{cell:>16}" for cell in cells))
    return lines


def show_view(view: dict[str, Any]) -> list[str]:
    lines = [f"namespace {view['namespace']}", f"  {'limit':<10} {'quota':>12} {'in use':>12}"]
    for key in FLAGS:
        lines.append(f"  {key:<10} {_amount(key, view['quota'][key]):>12} {_amount(key, view['use'][key]):>12}")
    return lines


def _amount(key: str, value: Any, unlimited: str = "unlimited") -> str:
    if value is None:
        return unlimited
    return quotas.memory_text(int(value)) if key == "memory" else f"{value:g}"
