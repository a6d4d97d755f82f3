"""The import graph of ``src/explainers`` follows the layers of docs/architecture.md, and has no cycles.

Every ``import`` statement is collected with :mod:`ast`, function-local ones included, together with
``importlib.import_module("explainers....")`` calls and ``"explainers.x.y[:attr]"`` strings (lazy references
such as the dataset kinds), which count for the layering but not for cycles since they are imported on
first use. A module may import its own component and any component of a lower layer; an import of a
component in the same layer (siblings are independent) or a higher one fails, and so does any cycle of
modules. The negative cases at the bottom prove the check fails when such an import is added.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

#: Lowest layer first. A component is a module or a package (with everything under it); components in one
#: layer may not import each other. docs/architecture.md explains each layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("explainers._version", "explainers._compat", "explainers.errors"),
    ("explainers._registry", "explainers.devices", "explainers.maps", "explainers.distributed", "explainers.io"),
    ("explainers.data",),
    ("explainers.models",),
    ("explainers.provenance",),
    ("explainers.metrics", "explainers.training"),
    ("explainers.learned",),
    ("explainers.methods",),
    ("explainers.heatmap",),
    ("explainers.explain",),
    ("explainers.benchmark",),
    ("explainers.demo",),
    ("explainers.cli",),
    ("explainers.__main__",),
    ("explainers",),  # the package root: the public names, loaded lazily; nothing inside imports it
)

#: Function-local imports of the package's own modules are allowed only here: the command line imports a
#: subcommand's machinery when that subcommand runs, so that ``explainers --help`` starts fast.
LOCAL_IMPORTS_ALLOWED = ("explainers.cli", "explainers")

_MODULE_STRING = re.compile(r"explainers(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?")


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (the most specific module the statement names)
    line: int
    local: bool  # inside a function
    lazy: bool  # a string reference or importlib call, imported on first use


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name → file of every module of the package under ``root`` (a ``src`` folder)."""
    out = {}
    for path in sorted((root / "explainers").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (None: not ours)."""
    known = set(modules)
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def collect_edges(root: Path) -> list[Edge]:
    """Every reference from a module of the package to another module of it."""
    modules = module_names(root)
    edges: list[Edge] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }

        def add(target: str, node: ast.AST, local: bool, lazy: bool, name: str = name) -> None:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != name:
                edges.append(Edge(name, resolved, node.lineno, local, lazy))

        def visit(node: ast.AST, local: bool, package: str = package, docstrings: set[int] = docstrings) -> None:
            for child in ast.iter_child_nodes(node):
                inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        add(alias.name, child, local, False)
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                        module = ".".join(base + ([child.module] if child.module else []))
                    else:
                        module = child.module or ""
                    for alias in child.names:  # ``from pkg import submodule`` names the submodule
                        add(f"{module}.{alias.name}", child, local, False)
                elif (
                    isinstance(child, ast.Constant)
                    and isinstance(child.value, str)
                    and id(child) not in docstrings
                    and _MODULE_STRING.fullmatch(child.value)
                ):
                    add(child.value.partition(":")[0], child, local, True)
                visit(child, inside)

        visit(tree, False)
    return edges


def component_of(module: str, layers: Sequence[Sequence[str]]) -> tuple[int, str] | None:
    """(layer index, component) of ``module``: the component with the longest matching prefix."""
    best: tuple[int, str] | None = None
    for index, components in enumerate(layers):
        for component in components:
            if _within(module, component) and (best is None or len(component) > len(best[1])):
                best = (index, component)
    return best


def _within(module: str, component: str) -> bool:
    """``module`` is ``component`` or under it; the package root ``explainers`` holds only itself."""
    return module == component or (component != "explainers" and module.startswith(component + "."))


def layering_violations(edges: Iterable[Edge], modules: Iterable[str], layers: Sequence[Sequence[str]]) -> list[str]:
    problems = [
        f"{m} belongs to no layer: add it to LAYERS in tests/test_architecture.py and to docs/architecture.md"
        for m in modules
        if component_of(m, layers) is None
    ]
    for e in edges:
        src, dst = component_of(e.source, layers), component_of(e.target, layers)
        if src is None or dst is None or src[1] == dst[1]:
            continue
        if dst[0] == src[0]:
            problems.append(
                f"{e.source}:{e.line} imports {e.target}: {src[1]} and {dst[1]} are siblings in one layer"
            )
        elif dst[0] > src[0]:
            problems.append(
                f"{e.source}:{e.line} imports {e.target} from a higher layer ({src[1]} is layer {src[0]}, "
                f"{dst[1]} is layer {dst[0]})"
            )
    return problems


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), over eager imports."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.lazy:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def local_import_violations(edges: Iterable[Edge], allowed: Sequence[str]) -> list[str]:
    found = {
        (e.source, e.line, e.target)
        for e in edges
        if e.local and not e.lazy and not any(_within(e.source, a) for a in allowed)
    }
    return [
        f"{source}:{line} imports {target} inside a function: import it at the top of the module"
        for source, line, target in sorted(found)
    ]


# ------------------------------------------------------------------------------------------------ the checks
@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return collect_edges(SRC)


def test_every_import_goes_down_the_layers(edges):
    problems = layering_violations(edges, module_names(SRC), LAYERS)
    assert not problems, "\n".join(problems)


def test_no_import_cycles(edges):
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(group) for group in found)


def test_package_modules_are_imported_at_module_level(edges):
    problems = local_import_violations(edges, LOCAL_IMPORTS_ALLOWED)
    assert not problems, "\n".join(problems)


def test_architecture_page_lists_every_layer():
    text = DOC.read_text()
    missing = [c for layer in LAYERS for c in layer if f"`{c}`" not in text]
    assert not missing, f"docs/architecture.md does not name {', '.join(missing)}"


def test_collector_sees_every_kind_of_import():
    modules = module_names(SRC)
    found = {(e.source, e.target, e.local, e.lazy) for e in collect_edges(SRC)}
    # a module-level ``from x import y`` of a module, a package-relative name, and a lazy string reference
    assert ("explainers.models.loading", "explainers.models.probe", False, False) in found
    assert ("explainers.data", "explainers.data.synthetic", False, True) in found
    assert "explainers.maps" in modules and component_of("explainers.maps", LAYERS) == (1, "explainers.maps")


# ------------------------------------------------------------------------------------------- negative cases
def _copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(SRC / "explainers", root / "explainers", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    return root


def _inject(root: Path, module: str, code: str) -> None:
    path = module_names(root)[module]
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_an_added_upward_import_fails(tmp_path):
    root = _copy_package(tmp_path)
    # hidden inside a function, as the old code did
    _inject(root, "explainers.models.base", "def _late():\n    from explainers.methods.base import Method\n")
    problems = layering_violations(collect_edges(root), module_names(root), LAYERS)
    assert any("explainers.models.base" in p and "explainers.methods.base" in p for p in problems), problems


def test_an_import_between_siblings_fails(tmp_path):
    root = _copy_package(tmp_path)
    _inject(root, "explainers.metrics.base", "import explainers.training.config")
    problems = layering_violations(collect_edges(root), module_names(root), LAYERS)
    assert any("siblings" in p and "explainers.training.config" in p for p in problems), problems


def test_an_added_cycle_fails(tmp_path):
    root = _copy_package(tmp_path)
    # within one component, so only the cycle check can catch it
    _inject(root, "explainers.models.base", "def _late():\n    from explainers.models.loading import load_explainee\n")
    groups = cycles(collect_edges(root))
    assert any({"explainers.models.base", "explainers.models.loading"} <= set(g) for g in groups), groups


def test_an_added_local_import_fails(tmp_path):
    root = _copy_package(tmp_path)
    _inject(root, "explainers.metrics.base", "def _late():\n    from explainers.data import open_dataset\n")
    problems = local_import_violations(collect_edges(root), LOCAL_IMPORTS_ALLOWED)
    assert any(p.startswith("explainers.metrics.base:") for p in problems), problems


def test_a_module_without_a_layer_fails(tmp_path):
    root = _copy_package(tmp_path)
    (root / "explainers" / "stray.py").write_text("x = 1\n")
    problems = layering_violations(collect_edges(root), module_names(root), LAYERS)
    assert any(p.startswith("explainers.stray belongs to no layer") for p in problems), problems


def test_layers_name_existing_components_only_once():
    seen: Mapping[str, int] = {}
    for index, layer in enumerate(LAYERS):
        for component in layer:
            assert component not in seen, f"{component} is in two layers"
            seen[component] = index  # type: ignore[index]
    modules = set(module_names(SRC))
    unknown = [c for c in seen if c not in modules]
    assert not unknown, f"LAYERS names modules that do not exist: {unknown}"


# ------------------------------------------------------------------------------------------------- start-up
#: Slow or optional imports that ``import explainers`` and ``explainers --help`` must not pay for.
HEAVY = ("transformers", "accelerate", "scipy", "matplotlib", "timm", "pycocotools", "h5py", "sklearn")


@pytest.mark.parametrize(
    "code",
    [
        "import explainers",
        "import sys; from explainers.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "help"],
)
def test_start_up_loads_no_heavy_package(code):
    import subprocess
    import sys

    report = f"\nimport sys\nprint('LOADED', *sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    run = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, check=True)
    loaded = [line for line in run.stdout.splitlines() if line.startswith("LOADED")][-1].split()[1:]
    assert not loaded, f"start-up imported {loaded}"
