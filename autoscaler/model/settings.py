"""Loading a component's frozen config dataclass from defaults, an optional TOML file, the
environment and command-line flags (in that order, later wins), validated against the ranges its
fields declare in metadata (`min`, `max`). Errors name the key, the value, where it came from and
the valid range, and stop the program at start."""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from engines.errors import EndpointdError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
ENV_PREFIX = "ENDPOINTD_"


class SettingsError(EndpointdError, ValueError):
    pass


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


# A list setting: a TOML list of strings, a flag given once per item, or an environment
# variable with the items separated by ':' (as PATH is).
PATHS = "tuple[str, ...]"
ENV_LIST_SEPARATOR = ":"


def _type_name(kind: type | str) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            PATHS: "a list of non-empty strings"}[kind]


def _coerce(kind: type | str, value: Any) -> Any:
    if kind == PATHS:
        items = value.split(ENV_LIST_SEPARATOR) if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
            raise ValueError
        return tuple(items)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    if not isinstance(value, str):
        raise ValueError
    return value


# A field's type as written (a string under `from __future__ import annotations`) -> the type.
_KINDS: Mapping[object, type] = {"int": int, "float": float, "bool": bool, "str": str}


def _check(section: str, field: dataclasses.Field[Any], value: Any, source: str) -> Any:
    kind = _KINDS.get(field.type, field.type)
    lo, hi = field.metadata.get("min"), field.metadata.get("max")
    valid = _type_name(kind) + (f" between {lo} and {hi}" if lo is not None and hi is not None else "")
    try:
        coerced = _coerce(kind, value)
    except (TypeError, ValueError):
        coerced = None
    if coerced is None or (lo is not None and coerced < lo) or (hi is not None and coerced > hi):
        raise SettingsError(f"{section}.{field.name} = {value!r} (from {source}) is invalid: it must be {valid}")
    return coerced


def load(
    cls: type[T],
    section: str,
    *,
    file_values: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Build `cls` from its defaults overridden by file, env (ENDPOINTD_<FIELD>) and flags."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, why in getattr(cls, "REMOVED", {}).items():  # keys that were settings once
        for given, source in (((file_values or {}).get(name), "the config file"), ((env or {}).get(env_name(name)), env_name(name))):
            if given is not None:
                raise SettingsError(f"{section}.{name} = {given!r} (from {source}) is no longer a setting: {why}")
    unknown = sorted(set(file_values or ()) - set(fields))
    if unknown:
        raise SettingsError(
            f"unknown key {section}.{unknown[0]} in the config file; valid keys: {', '.join(sorted(fields))}"
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        layers = [
            ((file_values or {}).get(name), f"the config file [{section}]"),
            ((env or {}).get(env_name(name)), env_name(name)),
            ((flags or {}).get(name), flag_name(name)),
        ]
        for value, source in layers:
            if value is not None:
                values[name] = _check(section, field, value, source)
    return cls(**values)


def read_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise SettingsError(f"cannot read the config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"the config file {path} is not valid TOML: {error}") from None


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field, defaulting to None so that unset flags do not override the env."""
    for field in dataclasses.fields(cls):
        repeated = field.type == PATHS
        parser.add_argument(
            flag_name(field.name.removesuffix("s") if repeated else field.name),
            dest=field.name,
            default=None,
            action="append" if repeated else "store",
            metavar="PATH" if repeated else field.type.upper() if isinstance(field.type, str) else "VALUE",
            help=f"{field.metadata.get('help', '')} ("
            + ("repeatable; " if repeated else "")
            + f"default {field.default!r}; env {env_name(field.name)}"
            + (f", items separated by '{ENV_LIST_SEPARATOR}'" if repeated else "") + ")",
        )


def flags_of(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
