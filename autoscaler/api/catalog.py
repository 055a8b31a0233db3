"""Routes that help choose what to deploy: the engine suggestion (`GET /v2/engines/suggest`) and
the inference catalog under `/api/v1/catalog` (the reference's own paths: `list`,
`model/{repo}/deploy`, `recipe/{id}/deploy`; docs/wire-format.md §9), which the unmodified client reaches
once `constants.INFERENCE_CATALOG_ENDPOINT` is `{endpointd}/api/v1/catalog`.

Every route needs a valid token (any user); a deploy needs membership of the namespace it
creates in, and is audited as a create (with the recipe)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal, overload

from aiohttp import web

from autoscaler.api import access
from autoscaler.api.base import Invalid, NotFound, read_json
from autoscaler.control.catalog_host import RecipeChecks, image_for
from autoscaler.model import wire
from autoscaler.model.catalog import CannotDeploy, CatalogError, endpoint_name
from engines import artifacts, hardware
from engines.availability import Verdict
from engines.suggest import REPLACEABLE, suggest

# Query and body strings are short words, ids and paths; longer is refused.
MAX_PARAM_CHARS = 256
MAX_LIMIT = 1000
SUGGEST_PARAMS = ("repository", "accelerator", "gguf", "revision")
LIST_PARAMS = ("accelerator", "engine", "license", "task", "search", "limit")


@overload
def _param(query: Mapping[str, str], key: str, *, required: Literal[True], limit: int = MAX_PARAM_CHARS,
           choices: tuple[str, ...] | None = None) -> str: ...
@overload
def _param(query: Mapping[str, str], key: str, *, required: bool = False, limit: int = MAX_PARAM_CHARS,
           choices: tuple[str, ...] | None = None) -> str | None: ...
def _param(query: Mapping[str, str], key: str, *, required: bool = False, limit: int = MAX_PARAM_CHARS,
           choices: tuple[str, ...] | None = None) -> str | None:
    values = query.getall(key, []) if hasattr(query, "getall") else [query[key]] if key in query else []
    if len(values) > 1:
        raise Invalid(f"query parameter {key} is given {len(values)} times; give it once")
    value = values[0] if values else None
    if value in (None, ""):
        if required:
            raise Invalid(f"query parameter {key} is required")
        return None
    if len(value) > limit or "\0" in value:
        raise Invalid(f"query parameter {key} must be at most {limit} characters; got {len(value)}")
    if choices is not None and value not in choices:
        raise Invalid(f"query parameter {key} must be one of {', '.join(choices)}; got {value[:40]!r}")
    return value


def _known(query: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise Invalid(f"unknown query parameter {unknown[0][:40]!r}; this route takes {', '.join(allowed)}")


def add_suggest_route(router: web.UrlDispatcher, api: Any) -> None:
    async def suggestion(request: web.Request) -> web.Response:
        identity = await access.identity(request, api.store)
        query = request.query
        _known(query, SUGGEST_PARAMS)
        repository = _param(query, "repository", required=True, limit=wire.MAX_REPOSITORY_CHARS)
        accelerator = _param(query, "accelerator", choices=hardware.ACCELERATORS) or hardware.CPU
        gguf = _param(query, "gguf")
        revision = _param(query, "revision")
        if artifacts.is_local(repository):
            await asyncio.to_thread(api.limits.roots.check, repository)  # only under the model roots, as a create
        facts = await api.describe(repository, revision, identity.user)  # the caller's own Hub cache
        # What this host can run first: an engine whose image is neither here nor pullable is passed
        # over where the toolkit serves the model too (each engine asked once: the loop is bounded).
        cannot_run: dict[str, str] = {}
        while True:
            chosen = suggest(facts, accelerator, gguf, cannot_run)
            container = image_for(chosen.image, accelerator, api.default_images)
            verdict: Verdict = await api.images.check(container) if api.images is not None else Verdict(container, None)
            if verdict.missing is None or chosen.variant not in REPLACEABLE or chosen.variant in cannot_run:
                break
            cannot_run[chosen.variant] = verdict.missing
        present = verdict.present
        try:
            pattern = artifacts.download_pattern(chosen.image, chosen.framework, facts)
        except artifacts.ArtifactError:
            pattern = None
        return web.json_response({
            "repository": repository, "revision": facts.revision, "accelerator": accelerator,
            "engine": chosen.variant, "image": chosen.image, "task": chosen.task, "framework": chosen.framework,
            "reason": chosen.reason, "ggufFiles": list(chosen.ggufs),
            "containerImage": container, "present": present, "mustPull": None if present is None else not present,
            "runnable": verdict.runnable, "unavailable": verdict.missing, "passedOver": cannot_run,
            "downloadPattern": None if pattern is None else list(pattern), "source": facts.source,
        })

    router.add_get("/engines/suggest", suggestion)


def add_catalog_routes(router: web.UrlDispatcher, api: Any) -> None:
    checks = RecipeChecks(api)  # what deploys on this host, and why the others cannot

    async def listing(request: web.Request) -> web.Response:
        identity = await access.identity(request, api.store)
        query = request.query
        _known(query, LIST_PARAMS)
        limit = _param(query, "limit")
        if limit is not None and (not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT):
            raise Invalid(f"query parameter limit must be an integer between 1 and {MAX_LIMIT}; got {limit[:40]!r}")
        matching = api.catalog.matching(
            accelerator=_param(query, "accelerator"), engine=_param(query, "engine"),
            license=_param(query, "license"), task=_param(query, "task"), search=_param(query, "search"),
            limit=int(limit) if limit is not None else None,
        )
        why_not = await checks.all((r for _, recipes in matching for r in recipes), identity.user)
        return web.json_response({"items": [model.render(recipes, why_not) for model, recipes in matching]})

    async def deploy(request: web.Request, recipe_of) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise Invalid("the request body must be a JSON object such as {\"namespace\": \"alice\"}")
        ns = _field(body, "namespace", required=True)
        identity = await access.member(request, api.store, ns)
        await api.namespace_exists(ns)
        try:
            recipe = await recipe_of(body)
        except CannotDeploy as error:
            raise Invalid(str(error)) from None
        except CatalogError as error:
            raise NotFound(str(error)) from None
        why = await checks.why_not(recipe, ns)
        if why is not None:
            raise Invalid(f"recipe {recipe.id} cannot deploy on this host: {why}")
        config = body.get("config")
        if config is not None and not isinstance(config, dict):
            raise Invalid("config must be an object such as {\"name\": \"my-endpoint\"}")
        name = _field(config or {}, "name", where="config.name") or endpoint_name(recipe)
        roots = api.limits.roots.roots
        try:
            spec = wire.parse_create(recipe.create_body(name, roots[0] if roots else None))
        except CatalogError as error:
            raise Invalid(str(error)) from None
        rec = await api.create_spec(request, identity, ns, spec, {"recipe": recipe.id})
        return web.json_response({"endpoint": api.render(rec)})

    async def deploy_model(request: web.Request) -> web.Response:
        repo = request.match_info["repo"]

        async def recipe_of(body):
            accelerator = _field(body, "accelerator")
            if accelerator is not None and accelerator not in hardware.ACCELERATORS:
                raise Invalid(f"accelerator must be one of {', '.join(hardware.ACCELERATORS)}; got {accelerator[:40]!r}")
            gguf = _field(body, "ggufFile")
            fitting = api.catalog.fitting(repo, accelerator, gguf)
            return api.catalog.choose(repo, accelerator, gguf, await checks.all(fitting, _field(body, "namespace") or ""))

        return await deploy(request, recipe_of)

    async def deploy_recipe(request: web.Request) -> web.Response:
        recipe_id = request.match_info["id"]

        async def recipe_of(body):
            for key in ("accelerator", "ggufFile"):
                if body.get(key) is not None:
                    raise Invalid(f"{key} cannot be used with a recipe id, which already is one recipe")
            recipe = api.catalog.recipe(recipe_id)
            if recipe is None:
                raise CatalogError(f"recipe {recipe_id[:80]} is not in the catalog; list them with `hf endpoints catalog ls`")
            return recipe

        return await deploy(request, recipe_of)

    router.add_get("/v1/catalog/list", listing)
    router.add_post(r"/v1/catalog/model/{repo:[^{}]+}/deploy", deploy_model)
    router.add_post("/v1/catalog/recipe/{id}/deploy", deploy_recipe)


@overload
def _field(body: Mapping[str, Any], key: str, *, required: Literal[True], where: str | None = None) -> str: ...
@overload
def _field(body: Mapping[str, Any], key: str, *, required: bool = False, where: str | None = None) -> str | None: ...
def _field(body: Mapping[str, Any], key: str, *, required: bool = False, where: str | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise Invalid(f"{where or key} is required")
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_PARAM_CHARS:
        raise Invalid(f"{where or key} must be a non-empty string of at most {MAX_PARAM_CHARS} characters")
    return value
