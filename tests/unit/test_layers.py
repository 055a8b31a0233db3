"""The house's import rules (docs/ARCHITECTURE.md), read from the source with `ast`: nothing here
imports the modules it checks, so an import inside a function or under TYPE_CHECKING counts as
any other.

- no import cycle among the project's modules;
- autoscaler/'s wings import only downward: roof > api > scaling > control > observe > store >
  model (a wing may import itself);
- proxy/ and engines/ never import autoscaler/, nor each other;
- proxy/core/ imports nothing of the proxy outside itself, and no HTTP server library;
- nothing imports inside a function except autoscaler/cli.py and the entries of LAZY_ALLOWED;
- `endpointd --help` stays fast: what autoscaler/cli.py imports at module level loads none of the
  heavy libraries its lazy imports put off.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("autoscaler", "proxy", "engines")

# autoscaler/'s wings, lowest first; every other module of autoscaler/ is the roof, above them all.
WINGS = ("model", "store", "observe", "control", "scaling", "api")
ROOF = "roof"

# The imports inside functions that have a reason, by (module, what it imports), the reason beside
# each. autoscaler/cli.py is exempt as a whole: its lazy imports keep `endpointd --help` and the
# small commands fast (the whole serve stack takes about a second to import, the CLI 0.15 s).
LAZY_ALLOWED = {
    # cli.py imports config at module level; presets pulls in huggingface_hub (~0.4 s).
    ("autoscaler.config", "engines.presets"): "keeps `endpointd --help` fast",
    # Docker's client (aiodocker, aiohttp: ~0.4 s) only when this data directory ever ran containers.
    ("autoscaler.stop", "engines.docker"): "`endpointd stop` on a fresh data directory stays fast",
    # An optional package: a host without nvidia-ml-py has no GPUs (gpus.py's docstring).
    ("engines.gpus", "pynvml"): "optional dependency",
    # Installed only in the toolkit image; handlers.py stays importable on the host's venv.
    ("engines.toolkit.handlers", "torch"): "only in the toolkit image",
    ("engines.toolkit.handlers", "transformers"): "only in the toolkit image",
    ("engines.toolkit.handlers", "sentence_transformers"): "only in the toolkit image",
}
LAZY_EXEMPT = {"autoscaler.cli"}

# Libraries `endpointd --help` must not load (each costs a tenth of a second or more).
HEAVY = {"aiohttp", "aiodocker", "huggingface_hub", "prometheus_client", "cryptography", "httptools", "uvloop"}
HTTP_SERVERS = {"aiohttp", "httptools"}


@dataclass(frozen=True)
class Import:
    line: int
    names: tuple[str, ...]  # dotted names as resolved: the module, and module.name for each name of a from-import
    lazy: bool  # inside a function
    typing_only: bool  # under `if TYPE_CHECKING:`


@dataclass(frozen=True)
class Project:
    files: dict[str, Path]  # module name -> file
    imports: dict[str, list[Import]]

    def targets(self, module: str, imp: Import) -> set[str]:
        """The project's modules `imp` reaches (its own package and the module itself left out)."""
        found = set()
        for name in imp.names:
            while name and name not in self.files:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
        return found

    def edges(self, *, eager_only: bool = False) -> dict[str, set[str]]:
        return {
            m: {t for imp in imps if not (eager_only and (imp.lazy or imp.typing_only)) for t in self.targets(m, imp)}
            for m, imps in self.imports.items()
        }


class _Visitor(ast.NodeVisitor):
    def __init__(self, package: str) -> None:
        self.package = package
        self.found: list[Import] = []
        self.functions = 0
        self.typing = 0

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING"):
            self.typing += 1
            for child in node.body:
                self.visit(child)
            self.typing -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self._add(node, tuple(alias.name for alias in node.names))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        self._add(node, (base, *(f"{base}.{alias.name}" for alias in node.names)))

    def _add(self, node: ast.stmt, names: tuple[str, ...]) -> None:
        self.found.append(Import(node.lineno, names, self.functions > 0, self.typing > 0))


def read_project(root: Path, packages: tuple[str, ...] = PACKAGES) -> Project:
    files: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            files[".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")] = path
    imports = {}
    for module, path in files.items():
        visitor = _Visitor(module if path.name == "__init__.py" else module.rpartition(".")[0])
        visitor.visit(ast.parse(path.read_text(), str(path)))
        imports[module] = visitor.found
    return Project(files, imports)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else ROOF


def rank(module: str) -> int:
    name = wing(module)
    return len(WINGS) if name == ROOF else WINGS.index(name)


def upward_imports(project: Project) -> list[str]:
    return sorted(
        f"{m}:{imp.line} ({wing(m)}) imports {t} ({wing(t)})"
        for m, imps in project.imports.items() if m.split(".")[0] == "autoscaler"
        for imp in imps for t in sorted(project.targets(m, imp))
        if t.split(".")[0] == "autoscaler" and rank(t) > rank(m)
    )


def in_core(module: str) -> bool:
    return module == "proxy.core" or module.startswith("proxy.core.")


# The one error base (its class attribute `status` is the one error-to-status table): a leaf
# module every package may import.
SHARED_LEAVES = frozenset({"engines.errors"})


def forbidden_imports(project: Project) -> list[str]:
    """proxy/ and engines/ importing autoscaler/ or each other; proxy/core/ importing the proxy
    outside itself or an HTTP server library. A shared leaf may be imported by all, and imports
    nothing of the project."""
    refused = {"proxy": {"autoscaler", "engines"}, "engines": {"autoscaler", "proxy"}}
    found = []
    for m, imps in project.imports.items():
        top = m.split(".")[0]
        for imp in imps:
            for t in sorted(project.targets(m, imp)):
                if m in SHARED_LEAVES:
                    found.append(f"{m}:{imp.line} (a shared leaf) imports {t}")
                elif t in SHARED_LEAVES:
                    continue
                elif t.split(".")[0] in refused.get(top, ()):
                    found.append(f"{m}:{imp.line} imports {t}")
                elif in_core(m) and not in_core(t):
                    found.append(f"{m}:{imp.line} (the core) imports {t}")
            if in_core(m):
                found += [f"{m}:{imp.line} (the core) imports {n}" for n in imp.names[:1]
                          if n.split(".")[0] in HTTP_SERVERS]
    return sorted(found)


def lazy_imports(project: Project) -> dict[tuple[str, str], int]:
    """(module, imported module) -> line, for every import inside a function."""
    return {
        (m, imp.names[0]): imp.line
        for m, imps in project.imports.items() if m not in LAZY_EXEMPT
        for imp in imps if imp.lazy
    }


def eager_closure(project: Project, start: str) -> set[str]:
    """The project's modules importing `start` loads: module-level imports, and each module's packages."""
    edges = project.edges(eager_only=True)
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += edges[module]
    return seen


PROJECT = read_project(ROOT)


def test_the_project_is_read_whole():
    assert len(PROJECT.files) > 100
    assert {"autoscaler.cli", "proxy.core.pipeline", "engines.runtime"} <= set(PROJECT.files)
    assert any(imp.lazy for imp in PROJECT.imports["autoscaler.cli"])


def test_no_import_cycle():
    assert cycles(PROJECT.edges()) == []


def test_every_package_of_autoscaler_is_a_wing():
    packages = {p.parent.name for p in (ROOT / "autoscaler").glob("*/__init__.py")}
    assert packages == set(WINGS)


def test_autoscaler_wings_import_only_downward():
    assert upward_imports(PROJECT) == []


def test_proxy_and_engines_stay_apart_and_below_the_control_plane():
    assert forbidden_imports(PROJECT) == []


def test_imports_inside_functions_have_a_reason():
    lazy = lazy_imports(PROJECT)
    assert {key: line for key, line in lazy.items() if key not in LAZY_ALLOWED} == {}
    assert set(LAZY_ALLOWED) - set(lazy) == set(), "an allowed lazy import is gone: drop its entry"


def test_the_command_line_loads_no_heavy_library_at_start():
    loaded = eager_closure(PROJECT, "autoscaler.cli")
    libraries = {
        name.split(".")[0]
        for m in loaded for imp in PROJECT.imports[m] if not (imp.lazy or imp.typing_only) for name in imp.names[:1]
    }
    assert libraries & HEAVY == set()
    assert "autoscaler.parts" not in loaded and "proxy.server" not in loaded


# --- the checks find what they look for ------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> Project:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return read_project(root)


def test_a_cycle_through_a_function_or_type_checking_import_is_found(tmp_path):
    project = write(tmp_path, {
        "autoscaler/__init__.py": "",
        "autoscaler/a.py": "from . import b\n",
        "autoscaler/b.py": "def f():\n    from autoscaler.c import x\n",
        "autoscaler/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import autoscaler.a\nx = 1\n",
        "autoscaler/d.py": "import autoscaler.a\n",
    })
    assert cycles(project.edges()) == [["autoscaler.a", "autoscaler.b", "autoscaler.c"]]
    assert lazy_imports(project) == {("autoscaler.b", "autoscaler.c"): 2}
    assert eager_closure(project, "autoscaler.d") == {"autoscaler", "autoscaler.d", "autoscaler.a", "autoscaler.b"}


def test_upward_and_forbidden_imports_are_found(tmp_path):
    project = write(tmp_path, {
        "autoscaler/__init__.py": "",
        "autoscaler/cli.py": "from autoscaler.api import app\n",
        "autoscaler/model/__init__.py": "",
        "autoscaler/model/spec.py": "from ..store.store import Store\n",
        "autoscaler/store/__init__.py": "",
        "autoscaler/store/store.py": "from autoscaler.model import spec\nclass Store: ...\n",
        "autoscaler/api/__init__.py": "",
        "autoscaler/api/app.py": "from autoscaler import cli\n",
        "proxy/__init__.py": "",
        "proxy/core/__init__.py": "",
        "proxy/core/pipeline.py": "import aiohttp\nfrom ..raw import client\n",
        "proxy/raw/__init__.py": "",
        "proxy/raw/client.py": "from engines import runtime\n",
        "engines/__init__.py": "",
        "engines/runtime.py": "def f():\n    from autoscaler.model.spec import x\n",
    })
    assert upward_imports(project) == [
        "autoscaler.api.app:1 (api) imports autoscaler.cli (roof)",
        "autoscaler.model.spec:1 (model) imports autoscaler.store.store (store)",
    ]
    assert forbidden_imports(project) == [
        "engines.runtime:2 imports autoscaler.model.spec",
        "proxy.core.pipeline:1 (the core) imports aiohttp",
        "proxy.core.pipeline:2 (the core) imports proxy.raw",
        "proxy.core.pipeline:2 (the core) imports proxy.raw.client",
        "proxy.raw.client:1 imports engines",
        "proxy.raw.client:1 imports engines.runtime",
    ]
