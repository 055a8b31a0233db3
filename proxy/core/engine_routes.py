"""The engines' control routes, which no caller reaches through the proxy.

vLLM, SGLang and llama.cpp serve routes beside their inference API that act on the whole engine:
sleep and wake, weight updates, cache flushes, profiling, aborting or pausing every request,
other callers' slots. They are the control plane's to call (directly on the replica's address),
never a caller's: the proxy answers them 404 for every endpoint whose engine has them, whatever
the method or query string.

    closed_route(EngineKind.VLLM, "/%73leep?level=1")  ->  True

A route entry carries its engine's kind (`RouteEntry.engine`): the preset's variant for an
endpoint of `endpointd serve`, `engine` in a routes file of `endpointd proxy`. TGI, TEI, the
inference toolkit and custom images are `OTHER`: the first three have no such routes, and a
custom image's routes are its own, so nothing of theirs is closed.

The path is compared as the engine's router would see it, and more: percent-decoded (a few times
over, for a stack that decodes twice), dot segments resolved, empty segments and a trailing slash
dropped, case folded (every engine here routes case-sensitively, so folding only refuses more).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import NotFound


class EngineKind(enum.StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ClosedRoutes:
    exact: frozenset[str]  # normalised paths (engine_path's form)
    prefixes: tuple[str, ...] = ()  # and every path starting with one of these

    def closes(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)


# From each engine's route table: vLLM's api_server and its dev-mode (VLLM_SERVER_DEV_MODE=1),
# RLHF, profiler, elastic-EP and runtime-LoRA routers; SGLang's srt/entrypoints/http_server.py;
# llama.cpp's tools/server/server.cpp at the pinned build (engines/pinned.py).
CLOSED: Mapping[EngineKind, ClosedRoutes] = {
    EngineKind.VLLM: ClosedRoutes(frozenset({
        "/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/reset_prefix_cache", "/reset_mm_cache",
        "/reset_encoder_cache", "/server_info", "/reconfigure", "/start_profile", "/stop_profile",
        "/pause", "/resume", "/is_paused", "/abort_requests", "/scale_elastic_ep", "/is_scaling_elastic_ep",
        "/init_weight_transfer_engine", "/start_weight_update", "/start_draft_weight_update",
        "/finish_weight_update", "/update_weight_version", "/weight_checker", "/weight_info",
        "/get_world_size", "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
    }), prefixes=("/update_weights",)),
    EngineKind.SGLANG: ClosedRoutes(frozenset({
        "/release_memory_occupation", "/resume_memory_occupation", "/flush_cache", "/abort_request",
        "/clear_hicache_storage_backend", "/start_profile", "/stop_profile", "/configure_logging",
        "/set_internal_state", "/get_internal_state", "/init_weights_update_group",
        "/destroy_weights_update_group", "/init_weights_send_group_for_remote_instance",
        "/send_weights_to_remote_instance", "/update_weight_version", "/get_weights_by_name",
        "/start_expert_distribution_record", "/stop_expert_distribution_record",
        "/dump_expert_distribution_record", "/slow_down", "/pause_generation", "/continue_generation",
        "/freeze_gc", "/load_lora_adapter", "/unload_lora_adapter",
    }), prefixes=("/update_weights",)),
    # /slots lists every slot with the prompt it holds (other callers' text); /slots/{id}?action=
    # saves, restores or erases one. /lora-adapters sets the adapters every request runs with.
    EngineKind.LLAMACPP: ClosedRoutes(frozenset({
        "/slots", "/lora-adapters", "/models/load", "/models/unload",
    }), prefixes=("/slots/",)),
    EngineKind.OTHER: ClosedRoutes(frozenset()),
}

# How many times a path is percent-decoded at most: an engine decodes once, a stack in front of
# it perhaps once more; bounded so that a long `%2525...` costs no more than a few passes.
MAX_DECODES = 4


def engine_path(upstream_path: str) -> str:
    """The path of a request target as the engine routes it, normalised (module docstring)."""
    path = upstream_path.partition("?")[0].partition("#")[0]
    for _ in range(MAX_DECODES):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments).lower()


def closed_route(engine: EngineKind, upstream_path: str) -> bool:
    """Whether `upstream_path` (the target the replica would see) is one of the engine's control routes."""
    closed = CLOSED[engine]
    return bool(closed.exact or closed.prefixes) and closed.closes(engine_path(upstream_path))


def control_route_refusal() -> NotFound:
    return NotFound(
        "this path is one of the engine's control routes, which are not served through the proxy",
        cause="control_route",
    )
