"""A static control plane read from a TOML file, for running the proxy alone (`endpointd proxy`).

    [[users]]                       [[endpoints]]
    name = "alice"                  namespace = "acme"
    orgs = ["acme"]                 name = "echo"
    tokens = ["s3cret"]             type = "private"        # public | authenticated | private
    scopes = ["metrics"]            replicas = ["127.0.0.1:9000"]
    # optional: "metrics" may       domain = "echo.local"   # optional: Host-based routing
    # read /metrics                 engine = "vllm"         # optional: vllm | sglang | llamacpp
                                                            # closes its control routes
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from engines.errors import EndpointdError

from .core.auth import SCOPES
from .core.control import AuthType, Identity, InMemoryControlPlane, Replica, RouteEntry
from .core.engine_routes import EngineKind


class RoutesError(EndpointdError, ValueError):
    pass


def _list_of_str(where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RoutesError(f"{where} must be a list of strings; got {value!r}")
    return value


def _str(where: str, table: dict, key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise RoutesError(f"{where}.{key} must be a non-empty string; got {value!r}")
    return value


def parse(data: dict[str, Any]) -> InMemoryControlPlane:
    control = InMemoryControlPlane()
    for i, user in enumerate(data.get("users", [])):
        where = f"users[{i}]"
        scopes = frozenset(_list_of_str(f"{where}.scopes", user.get("scopes", [])))
        if not scopes <= SCOPES:
            raise RoutesError(f"{where}.scopes may hold only {', '.join(sorted(SCOPES))}; got {sorted(scopes - SCOPES)}")
        identity = Identity(
            _str(where, user, "name"), frozenset(_list_of_str(f"{where}.orgs", user.get("orgs", []))), scopes=scopes
        )
        for token in _list_of_str(f"{where}.tokens", user.get("tokens", [])):
            control.add_token(token, identity)
    for i, ep in enumerate(data.get("endpoints", [])):
        where = f"endpoints[{i}]"
        kind = ep.get("type", "authenticated")
        try:
            auth = AuthType("authenticated" if kind == "protected" else kind)
        except ValueError:
            raise RoutesError(f"{where}.type must be public, authenticated or private; got {kind!r}") from None
        addresses = _list_of_str(f"{where}.replicas", ep.get("replicas", []))
        domain = ep.get("domain")
        if domain is not None and not isinstance(domain, str):
            raise RoutesError(f"{where}.domain must be a string; got {domain!r}")
        engine = ep.get("engine", EngineKind.OTHER.value)
        if engine not in [kind.value for kind in EngineKind]:
            raise RoutesError(f"{where}.engine must be one of {', '.join(EngineKind)}; got {engine!r}")
        control.put(
            RouteEntry(
                namespace=_str(where, ep, "namespace"),
                name=_str(where, ep, "name"),
                auth=auth,
                replicas=tuple(Replica(f"r{j}", a) for j, a in enumerate(addresses)),
                domain=domain.lower() if domain else None,
                engine=EngineKind(engine),
            )
        )
    return control


def load(path: str) -> InMemoryControlPlane:
    try:
        return parse(tomllib.loads(Path(path).read_text()))
    except OSError as error:
        raise RoutesError(f"cannot read the routes file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise RoutesError(f"the routes file {path} is not valid TOML: {error}") from None
