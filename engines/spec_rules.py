"""The rules an endpoint's model settings must follow at both doors: the API's wire format
(autoscaler/model/wire.py answers 400 with these sentences) and the engine presets
(engines/presets.py, before any container is built). Each rule, and its sentence, is here once,
below both: `model.image` is one known variant whose options are an object, a custom image names
its `url` and well-formed `credentials`, a health route is a path, `env` maps variable names to
strings, and no name is in both `env` and `secrets`.

A broken rule raises `PresetError`, whose message names the JSON path, what to send and what came
(a secret's value is never shown, only its JSON type); wire.py re-raises it as its WireError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from engines.errors import EndpointdError

MISSING: Any = object()  # a key the body does not have; messages say "got nothing (the key is missing)"
# The variants of the Inference Endpoints API, in the order its client lists them (hf_api.py:9291).
VARIANTS = ("vLLM", "sGLang", "tgi", "tei", "llamacpp", "hfServe", "custom", "huggingface")
# The inference toolkit's variants: they take `env` (the FAQ's `image.huggingface.env`).
TOOLKIT_VARIANTS = ("huggingface", "hfServe")
HEALTH_ROUTE_KEYS = ("healthRoute", "health_route")  # health_route: the 2023 spec's spelling


class PresetError(EndpointdError, ValueError):
    """The settings cannot be turned into a container; the message says what to fix."""

    status = 400


def show(value: Any) -> str:
    """A value as JSON, cut to 80 characters, for a message."""
    if value is MISSING:
        return "nothing (the key is missing)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def json_type(value: Any) -> str:
    """The JSON type of a value that must not be echoed (a secret)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__)


def fail(path: str, rule: str, value: Any) -> NoReturn:
    raise PresetError(f"{path} must be {rule}; got {show(value)}")


def env(value: Any, path: str, *, secret: bool = False) -> dict[str, str]:
    """Variable names to strings; a secret's value is never echoed, only its JSON type."""
    if not isinstance(value, Mapping):
        fail(path, "a JSON object", value)
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key:
            fail(path, "an object whose keys are variable names (non-empty, without '=')", key)
        if not isinstance(item, str):
            if secret:
                raise PresetError(f"{path}.{key} must be a string; got {json_type(item)} (not shown: it is a secret)")
            fail(f"{path}.{key}", "a string", item)
    return dict(value)


def disjoint(env: Mapping[str, str], secrets: Mapping[str, str]) -> None:
    """A variable is plain or secret, not both."""
    both = sorted(set(env) & set(secrets))
    if both:
        raise PresetError(f"model.env and model.secrets both set {', '.join(both)}; keep each name in one of them")


def image(value: Any, path: str = "model.image") -> tuple[str, Mapping[str, Any]]:
    """`model.image` as far as its shape: (variant, options). Each variant's own keys are its
    preset's to read and check."""
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in VARIANTS:
        fail(path, f"an object with exactly one key among {', '.join(VARIANTS)}", value)
    variant, options = next(iter(value.items()))
    where = f"{path}.{variant}"
    if not isinstance(options, Mapping):
        fail(where, "a JSON object", options)
    if variant == "custom":
        url = options.get("url", MISSING)
        if not isinstance(url, str) or not url:
            fail(f"{where}.url", 'the image to run, a non-empty string such as "ghcr.io/acme/server:1.2"', url)
        credentials = options.get("credentials")
        if credentials is not None:
            _credentials(credentials, f"{where}.credentials")
    if (variant in TOOLKIT_VARIANTS or variant == "custom") and options.get("env") is not None:
        env(options["env"], f"{where}.env")  # the FAQ's way to set the toolkit's environment; a custom image's too
    for key in HEALTH_ROUTE_KEYS:
        route = options.get(key)
        if route is not None and (not isinstance(route, str) or not route.startswith("/")):
            fail(f"{where}.{key}", "a path starting with '/', such as \"/health\"", route)
    return variant, options


def _credentials(value: Any, path: str) -> None:
    if not isinstance(value, Mapping):
        fail(path, "a JSON object", value)
    username = value.get("username", MISSING)
    if not isinstance(username, str) or not username:
        fail(f"{path}.username", "a non-empty string", username)
    if not isinstance(value.get("password", ""), str):
        raise PresetError(f"{path}.password must be a string or absent; got "
                          f"{json_type(value['password'])} (not shown: it is a secret)")
