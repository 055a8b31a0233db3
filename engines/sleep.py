"""How each engine sleeps and wakes: a sleeping replica's engine process stays up but gives back
its model memory, and is woken for the next request (`compute.scaling.sleepAfter`).

Three engines can, each its own way (the presets turn the feature on: engines/presets.py):

    vLLM       endpointd drives it: `POST /sleep?level=1` (weights offloaded to CPU memory, KV
               cache dropped), `POST /wake_up`, `GET /is_sleeping` -> {"is_sleeping": bool}.
               vLLM serves them only with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode. A sleep
               aborts the requests it is serving: send one only to an idle replica.
    SGLang     endpointd drives it: `POST /release_memory_occupation` and `POST
               /resume_memory_occupation`, each with the JSON body {} (every memory tag); only
               with --enable-memory-saver. SGLang has no route that says whether it sleeps.
    llama.cpp  sleeps by itself after --sleep-idle-seconds N without a task, and wakes itself for
               the next inference request (which waits for the model to load again): endpointd
               sends it nothing. `GET /props` says `"is_sleeping"`; it, /health and /metrics are
               answered while asleep without waking it or restarting its idle timer
               (tools/server/server-context.cpp and server-queue.cpp at the pinned build).

Every call goes to the replica's published address with its engine key (readiness.auth_headers).

Errors:
    SleepFailed   (a RuntimeFailure) a route answered other than 2xx, could not be reached, or
                  answered something unreadable; names the route, the status and the body's start.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from .readiness import auth_headers
from .runtime import ReplicaInfo, RuntimeFailure


class SleepKind(enum.StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"


# `model.image` variants (wire format) whose engine can sleep; every other one cannot (a custom
# image is the user's own: endpointd cannot know whether or how it sleeps, even the echo image).
KINDS: Mapping[str, SleepKind] = {"vLLM": SleepKind.VLLM, "sGLang": SleepKind.SGLANG, "llamacpp": SleepKind.LLAMACPP}

# compute.scaling.sleepAfter's range, in seconds: a day at most (an endpoint idle for longer is
# better scaled to zero, which frees the whole replica).
MIN_SLEEP_AFTER_S = 1
MAX_SLEEP_AFTER_S = 86400

# The most of an answer's body a SleepFailed quotes.
BODY_QUOTED = 200


class SleepFailed(RuntimeFailure):
    """A sleep, a wake or a sleep-state query failed; the detail names the route and the answer."""


# (method, path, JSON body or None) of each call, by engine.
_Call = tuple[str, str, Mapping[str, Any] | None]
_SLEEP: Mapping[SleepKind, _Call] = {
    SleepKind.VLLM: ("POST", "/sleep?level=1", None),
    SleepKind.SGLANG: ("POST", "/release_memory_occupation", {}),
}
_WAKE: Mapping[SleepKind, _Call] = {
    SleepKind.VLLM: ("POST", "/wake_up", None),
    SleepKind.SGLANG: ("POST", "/resume_memory_occupation", {}),
}
_STATE: Mapping[SleepKind, _Call] = {
    SleepKind.VLLM: ("GET", "/is_sleeping", None),
    SleepKind.LLAMACPP: ("GET", "/props", None),
}
# What a 404 most likely means, by engine: the route exists only when the engine was started so.
_NOT_SERVED = {
    SleepKind.VLLM: "vLLM serves it only with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode",
    SleepKind.SGLANG: "SGLang serves it only with --enable-memory-saver",
    SleepKind.LLAMACPP: "this llama-server predates --sleep-idle-seconds",
}


def sleep_kind(image: Mapping[str, Any]) -> SleepKind | None:
    """How the engine of an endpoint's `model.image` (one variant key) sleeps; None: it cannot."""
    if len(image) != 1:
        raise ValueError(f"model.image must have exactly one variant key, got {sorted(image)}")
    (variant,) = image
    return KINDS.get(variant)


def driven(kind: SleepKind) -> bool:
    """Whether endpointd sends the sleep and the wake (vLLM, SGLang), or the engine sleeps and
    wakes by itself (llama.cpp)."""
    return kind is not SleepKind.LLAMACPP


async def put_to_sleep(session: aiohttp.ClientSession, replica: ReplicaInfo, kind: SleepKind, timeout_s: float) -> None:
    """Send the engine to sleep; returns once it answered (vLLM answers when it is asleep).
    ValueError for llama.cpp, which sleeps by itself."""
    if kind not in _SLEEP:
        raise ValueError(f"the {kind} engine sleeps by itself (--sleep-idle-seconds): nothing to send")
    await _call(session, replica, kind, "sleep", _SLEEP[kind], timeout_s)


async def wake_up(session: aiohttp.ClientSession, replica: ReplicaInfo, kind: SleepKind, timeout_s: float) -> None:
    """Wake the engine; returns once it answered (vLLM and SGLang answer when the memory is back).
    llama.cpp: nothing is sent, the forwarded request itself wakes it (and waits for it)."""
    if kind in _WAKE:
        await _call(session, replica, kind, "wake", _WAKE[kind], timeout_s)


async def is_sleeping(
    session: aiohttp.ClientSession, replica: ReplicaInfo, kind: SleepKind, timeout_s: float
) -> bool | None:
    """Whether the engine sleeps, as it says; None for SGLang, which has no route that says."""
    if kind not in _STATE:
        return None
    call = _STATE[kind]
    body = await _call(session, replica, kind, "is_sleeping", call, timeout_s)
    try:
        state = json.loads(body).get("is_sleeping")
    except (ValueError, AttributeError):
        state = None
    if not isinstance(state, bool):
        raise SleepFailed("is_sleeping", _target(replica),
                          f"{call[0]} {call[1]} answered no boolean is_sleeping: {body[:BODY_QUOTED]!r}")
    return state


def _target(replica: ReplicaInfo) -> str:
    return f"replica {replica.replica_id}"


async def _call(
    session: aiohttp.ClientSession, replica: ReplicaInfo, kind: SleepKind, operation: str, call: _Call,
    timeout_s: float,
) -> str:
    """The body of a 2xx answer to `call`, as text; SleepFailed otherwise."""
    method, path, body = call
    route = f"{method} {path}"
    if replica.address is None:
        raise SleepFailed(operation, _target(replica), f"{route} not sent: the replica has no address (not running)")
    try:
        async with session.request(
            method, f"http://{replica.address}{path}", json=body, headers=auth_headers(replica),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            text = await response.text(errors="replace")
            status = response.status
    except TimeoutError:
        raise SleepFailed(operation, _target(replica), f"{route} did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as error:
        raise SleepFailed(operation, _target(replica), f"{route} failed: {str(error) or type(error).__name__}") from None
    if not 200 <= status < 300:
        hint = f" ({_NOT_SERVED[kind]})" if status == 404 else ""
        raise SleepFailed(operation, _target(replica), f"{route} answered {status}{hint}: {text[:BODY_QUOTED]!r}")
    return text
