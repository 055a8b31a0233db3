"""The inference catalog: recipes (a repository, an engine with its settings, hardware) that the
unmodified client's `list_inference_catalog()` lists and `create_inference_endpoint_from_catalog()`
deploys (shapes: docs/wire-format.md §9). The shipped recipes are in `catalog.toml` beside this file, whose
header documents the format; operators add theirs in files of the same form (`catalog_files`).

Every recipe is checked when endpointd starts, as a create body would be (wire format, engine
preset), so a bad one stops it with the file, the recipe and what to fix.

Errors:
    CatalogError   a catalog file or recipe is refused (at start); or no recipe fits a deploy (404)
      CannotDeploy the recipes that fit need what this host lacks (400)
"""

from __future__ import annotations

import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, overload

from autoscaler.model import wire
from autoscaler.model.settings import SettingsError
from autoscaler.model.times import wire_time
from engines import hardware, presets

SHIPPED = Path(__file__).with_name("catalog.toml")
MODEL_ROOT = "{model_root}"  # in `repository`: the first model root of this endpointd
RECIPE_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
MAX_TEXT = 200  # license, task, instance names: short words
# Far more than anyone curates by hand, and a bound on what a listing returns.
MAX_RECIPES = 10_000
MAX_FILE_BYTES = 4 << 20
MODEL_KEYS = frozenset({"repo_id", "license", "task", "added", "repository", "framework", "revision", "prepare",
                        "recipe"})
RECIPE_KEYS = frozenset({"id", "accelerator", "instance_type", "instance_size", "image", "min_replica", "max_replica",
                         "scale_to_zero_timeout", "type", "env", "default"})
# A generated endpoint name: the model's name cut to this, then '-' and a random suffix (NAME: 32 at most).
NAME_STEM_CHARS, NAME_SUFFIX_CHARS = 26, 5
NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class CatalogError(SettingsError):
    """A catalog file or recipe that cannot be used; the message names the file, the recipe and the fix."""


class CannotDeploy(CatalogError):
    """The recipe is in the catalog but this host lacks what it needs (400); the message says what."""


@dataclass(frozen=True)
class Recipe:
    id: str
    repo_id: str
    repository: str  # may start with MODEL_ROOT
    framework: str
    task: str
    revision: str | None
    prepare: str | None  # the command that puts a local repository in place, said when it is missing
    accelerator: str
    instance_type: str
    instance_size: str
    image: Mapping[str, Any]
    min_replica: int
    max_replica: int
    scale_to_zero_timeout: int | None
    type: str
    env: Mapping[str, str]
    default: bool

    @property
    def variant(self) -> str:
        return next(iter(self.image))

    @property
    def engine(self) -> str:
        """The catalog's `engineType`: the variant in lower case ("vllm", "llamacpp", "tei", ...)."""
        return self.variant.lower()

    @property
    def gguf_file(self) -> str | None:
        options = self.image[self.variant]
        return options.get("modelPath") if self.engine == "llamacpp" else None

    def create_body(self, name: str, model_root: Path | None) -> dict[str, Any]:
        """The endpoint this recipe deploys, as a create body of the wire format."""
        repository = self.repository
        if repository.startswith(MODEL_ROOT):
            if model_root is None:
                raise CatalogError(f"recipe {self.id} is under the model root, but this endpointd has none")
            repository = str(model_root) + repository[len(MODEL_ROOT):]
        scaling: dict[str, Any] = {"minReplica": self.min_replica, "maxReplica": self.max_replica}
        if self.scale_to_zero_timeout is not None:
            scaling["scaleToZeroTimeout"] = self.scale_to_zero_timeout
        return {
            "name": name, "type": self.type,
            "provider": {"vendor": wire.LOCAL_PROVIDER, "region": wire.LOCAL_PROVIDER},
            "compute": {"accelerator": self.accelerator, "instanceType": self.instance_type,
                        "instanceSize": self.instance_size, "scaling": scaling},
            "model": {"repository": repository, "framework": self.framework, "task": self.task,
                      "revision": self.revision, "image": dict(self.image), "env": dict(self.env)},
            "tags": [f"catalog:{self.id}"],
        }


@dataclass(frozen=True)
class CatalogModel:
    repo_id: str
    license: str
    task: str
    added: datetime
    recipes: tuple[Recipe, ...]

    def render(self, recipes: Iterable[Recipe], why_not: Mapping[str, str | None]) -> dict[str, Any]:
        """One item of `GET …/catalog/list` (`InferenceCatalogModel.from_raw`); each recipe also says
        whether it deploys on this host and, if not, why (`why_not`: recipe id -> reason)."""
        author, _, name = self.repo_id.rpartition("/")
        return {
            "repoId": self.repo_id, "modelName": name, "authorName": author, "license": self.license,
            "task": self.task, "createdAt": wire_time(self.added),
            "recipes": [
                {"publicId": r.id, "accelerator": r.accelerator, "engineType": r.engine, "ggufFile": r.gguf_file,
                 "revision": r.revision, "instanceType": r.instance_type, "instanceSize": r.instance_size,
                 "deployable": why_not.get(r.id) is None, "reason": why_not.get(r.id)}
                for r in recipes
            ],
        }


@dataclass(frozen=True)
class Catalog:
    models: tuple[CatalogModel, ...]

    def recipe(self, recipe_id: str) -> Recipe | None:
        return next((r for m in self.models for r in m.recipes if r.id == recipe_id), None)

    def model(self, repo_id: str) -> CatalogModel | None:
        return next((m for m in self.models if m.repo_id == repo_id), None)

    def listing(self, *, accelerator: str | None = None, engine: str | None = None, license: str | None = None,
                task: str | None = None, search: str | None = None, limit: int | None = None,
                why_not: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
        """The models that have a recipe matching every filter given, each with those recipes only."""
        return [model.render(recipes, why_not or {})
                for model, recipes in self.matching(accelerator=accelerator, engine=engine, license=license,
                                                    task=task, search=search, limit=limit)]

    def matching(self, *, accelerator: str | None = None, engine: str | None = None, license: str | None = None,
                 task: str | None = None, search: str | None = None,
                 limit: int | None = None) -> list[tuple[CatalogModel, list[Recipe]]]:
        items = []
        for model in self.models:
            if license is not None and model.license.lower() != license.lower():
                continue
            if task is not None and model.task != task:
                continue
            if search is not None and search.lower() not in model.repo_id.lower():
                continue
            recipes = [r for r in model.recipes if (accelerator is None or r.accelerator == accelerator)
                       and (engine is None or r.engine == engine.lower())]
            if recipes:
                items.append((model, recipes))
        return items[:limit] if limit is not None else items

    def fitting(self, repo_id: str, accelerator: str | None = None, gguf_file: str | None = None) -> list[Recipe]:
        """The recipes `model/{repo_id}/deploy` chooses among: those matching `accelerator` and `gguf_file`."""
        model = self.model(repo_id)
        if model is None:
            raise CatalogError(f"model {repo_id} is not in the catalog; list it with `hf endpoints catalog ls`")
        fitting = [r for r in model.recipes if (accelerator is None or r.accelerator == accelerator)
                   and (gguf_file is None or r.gguf_file == gguf_file)]
        if not fitting:
            offered = ", ".join(f"{r.id} ({r.accelerator}{', ' + r.gguf_file if r.gguf_file else ''})"
                                for r in model.recipes)
            raise CatalogError(f"no recipe of {repo_id} runs on accelerator {accelerator or 'any'} with ggufFile "
                               f"{gguf_file or 'any'}; its recipes: {offered}")
        return fitting

    def choose(self, repo_id: str, accelerator: str | None = None, gguf_file: str | None = None,
               why_not: Mapping[str, str | None] | None = None) -> Recipe:
        """The recipe `model/{repo_id}/deploy` deploys: among the fitting ones that deploy on this host
        (`why_not`: recipe id -> why it cannot), the one marked default, else the first listed.
        None deploys here: CannotDeploy, with each one's reason."""
        fitting = self.fitting(repo_id, accelerator, gguf_file)
        why_not = why_not or {}
        here = [r for r in fitting if why_not.get(r.id) is None]
        if not here:
            raise CannotDeploy(f"model {repo_id} cannot deploy on this host: "
                               + "; ".join(f"recipe {r.id}: {why_not[r.id]}" for r in fitting))
        return next((r for r in here if r.default), here[0])


def endpoint_name(recipe: Recipe) -> str:
    """A fresh endpoint name for a deploy without one: the model's name and a random suffix."""
    stem = re.sub(r"[^a-z0-9]+", "-", recipe.repo_id.rpartition("/")[2].lower()).strip("-")[:NAME_STEM_CHARS]
    suffix = "".join(secrets.choice(NAME_ALPHABET) for _ in range(NAME_SUFFIX_CHARS))
    return f"{stem.rstrip('-') or 'endpoint'}-{suffix}"


# --- loading and checking ---------------------------------------------------------------------------


def load_catalog(files: Sequence[str | Path], *, shipped: bool = True) -> Catalog:
    """The shipped recipes (unless `shipped` is false) and those of each file, in order. A model
    listed in several files gets the recipes of all; a recipe id may appear once."""
    models: dict[str, CatalogModel] = {}
    seen: dict[str, str] = {}
    count = 0
    for path in ([SHIPPED] if shipped else []) + [Path(f) for f in files]:
        for model in _read(path):
            for recipe in model.recipes:
                if recipe.id in seen:
                    raise CatalogError(f"catalog {path}: recipe id {recipe.id} is already used in {seen[recipe.id]}; "
                                       f"recipe ids must be unique")
                seen[recipe.id] = str(path)
            count += len(model.recipes)
            if count > MAX_RECIPES:
                raise CatalogError(f"catalog {path}: more than {MAX_RECIPES} recipes in all")
            known = models.get(model.repo_id)
            models[model.repo_id] = model if known is None else CatalogModel(
                known.repo_id, known.license, known.task, known.added, known.recipes + model.recipes)
    return Catalog(tuple(models.values()))


def _read(path: Path) -> list[CatalogModel]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise CatalogError(f"catalog {path} is larger than {MAX_FILE_BYTES} bytes")
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise CatalogError(f"cannot read the catalog file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CatalogError(f"the catalog file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - {"model"})
    if unknown:
        raise CatalogError(f"catalog {path}: unknown top-level key {unknown[0]}; recipes go in [[model]] tables")
    entries = data.get("model", [])
    if not isinstance(entries, list):
        raise CatalogError(f"catalog {path}: `model` must be an array of tables ([[model]])")
    return [_model(path, i, entry) for i, entry in enumerate(entries)]


def _text(where: str, table: Mapping[str, Any], key: str, default: Any = ..., pattern: re.Pattern | None = None,
          limit: int = MAX_TEXT) -> Any:
    value = table.get(key, default)
    if value is ...:
        raise CatalogError(f"{where}: {key} is required")
    if value is None and default is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit or (pattern and not pattern.fullmatch(value)):
        rule = f"matching {pattern.pattern}" if pattern else f"of at most {limit} characters"
        raise CatalogError(f"{where}: {key} = {value!r} is invalid: it must be a non-empty string {rule}")
    return value


@overload
def _integer(where: str, table: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int: ...
@overload
def _integer(where: str, table: Mapping[str, Any], key: str, default: None, lo: int, hi: int) -> int | None: ...
def _integer(where: str, table: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CatalogError(f"{where}: {key} = {value!r} is invalid: it must be an integer between {lo} and {hi}")
    return value


def _added(where: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise CatalogError(f"{where}: added = {value!r} is invalid: it must be a TOML date or date-time, e.g. 2026-12-01")


def _model(path: Path, index: int, entry: Any) -> CatalogModel:
    where = f"catalog {path}, model #{index + 1}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: must be a table")
    repo_id = _text(where, entry, "repo_id", pattern=REPO_ID)
    where = f"catalog {path}, model {repo_id}"
    unknown = sorted(set(entry) - MODEL_KEYS)
    if unknown:
        raise CatalogError(f"{where}: unknown key {unknown[0]}; valid keys: {', '.join(sorted(MODEL_KEYS))}")
    repository = _text(where, entry, "repository", repo_id, limit=wire.MAX_REPOSITORY_CHARS)
    common = dict(
        repo_id=repo_id, repository=repository, framework=_text(where, entry, "framework", "pytorch"),
        task=_text(where, entry, "task"), revision=_text(where, entry, "revision", None),
        prepare=_text(where, entry, "prepare", None),
    )
    recipes = entry.get("recipe", [])
    if not isinstance(recipes, list) or not recipes:
        raise CatalogError(f"{where}: needs at least one [[model.recipe]]")
    return CatalogModel(
        repo_id=repo_id, license=_text(where, entry, "license"), task=common["task"],
        added=_added(where, entry.get("added")),
        recipes=tuple(_recipe(f"catalog {path}", common, r) for r in recipes),
    )


def _recipe(where: str, common: dict[str, Any], entry: Any) -> Recipe:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}, a recipe of {common['repo_id']}: must be a table")
    recipe_id = _text(f"{where}, a recipe of {common['repo_id']}", entry, "id", pattern=RECIPE_ID)
    where = f"{where}, recipe {recipe_id}"
    unknown = sorted(set(entry) - RECIPE_KEYS)
    if unknown:
        raise CatalogError(f"{where}: unknown key {unknown[0]}; valid keys: {', '.join(sorted(RECIPE_KEYS))}")
    accelerator = entry.get("accelerator")
    if accelerator not in hardware.ACCELERATORS:
        raise CatalogError(f"{where}: accelerator = {accelerator!r} is invalid: it must be one of "
                           f"{', '.join(hardware.ACCELERATORS)}")
    default = entry.get("default", False)
    if not isinstance(default, bool):
        raise CatalogError(f"{where}: default = {default!r} is invalid: it must be true or false")
    image = entry.get("image")
    if not isinstance(image, dict):  # checked here: create_body copies it before the wire format's check
        raise CatalogError(f"{where}: image = {image!r} is invalid: it must be a table naming one engine, "
                           'e.g. image = { llamacpp = { modelPath = "model.gguf" } }')
    min_replica = _integer(where, entry, "min_replica", 1, 0, wire.MAX_REPLICAS)
    recipe = Recipe(
        id=recipe_id, **common, accelerator=accelerator,
        instance_type=_text(where, entry, "instance_type"), instance_size=_text(where, entry, "instance_size"),
        image=image, min_replica=min_replica,
        max_replica=_integer(where, entry, "max_replica", max(1, min_replica), 1, wire.MAX_REPLICAS),
        scale_to_zero_timeout=_integer(where, entry, "scale_to_zero_timeout", None, wire.MIN_SCALE_TO_ZERO_MIN,
                                       wire.MAX_SCALE_TO_ZERO_MIN),
        type=_text(where, entry, "type", "private"), env=entry.get("env", {}), default=default,
    )
    _check(where, recipe)
    return recipe


def _check(where: str, recipe: Recipe) -> None:
    """The recipe deploys as a valid create body, and its engine preset accepts its settings."""
    try:
        spec = wire.parse_create(recipe.create_body("catalog-check", Path("/model-root")))
    except (wire.WireError, CatalogError) as error:
        raise CatalogError(f"{where}: {error}") from None
    gpus = 1 if recipe.accelerator == hardware.GPU else 0
    resources = hardware.Resources(cpus=None, memory_bytes=None, gpu_count=gpus,
                                   gpu_device_ids=tuple(f"gpu-{i}" for i in range(gpus)))
    try:
        presets.build_container_spec(spec.model.image, model_dir="/repository", served_model_name=spec.name,
                                     resources=resources, env=spec.model.env)
    except presets.PresetError as error:
        raise CatalogError(f"{where}: {error}") from None
