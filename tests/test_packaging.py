"""pyproject.toml declares what the package imports; optional extras are imported only where they are needed;
the version comes from the package metadata; the package ships its ``py.typed`` marker."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

import explainers
from explainers import _version

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "explainers"

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

#: Import name → distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def third_party_imports() -> list[tuple[str, str, bool, bool]]:
    """(distribution, where, inside a function, guarded by ``except ImportError``) per import in src/."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())

        def visit(node: ast.AST, local: bool, guarded: bool, path: Path = path) -> None:
            for child in ast.iter_child_nodes(node):
                inner_local = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                inner_guarded = guarded
                if isinstance(child, ast.Try):
                    caught = {ast.unparse(h.type) for h in child.handlers if h.type is not None}
                    inner_guarded = guarded or bool(caught & {"ImportError", "ModuleNotFoundError"})
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in child.names] if isinstance(child, ast.Import) else [child.module or ""]
                    if isinstance(child, ast.ImportFrom) and child.level:
                        names = []
                    for name in names:
                        top = name.split(".")[0]
                        if top and top != "explainers" and top not in sys.stdlib_module_names:
                            where = f"{path.relative_to(ROOT)}:{child.lineno}"
                            out.append((DISTRIBUTION.get(top, top).lower(), where, local, guarded))
                visit(child, inner_local, inner_guarded)

        visit(tree, False, False)
    return out


def test_every_import_is_declared():
    project = _pyproject()["project"]
    required = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items() if name != "dev"}
    optional = set().union(*extras.values())
    problems = []
    for dist, where, local, guarded in third_party_imports():
        if dist in required:
            continue
        if dist in optional:
            if not local:  # an extra must not be needed to import the module that mentions it
                problems.append(f"{where}: {dist} is an optional extra but imported at module level")
        elif not guarded:
            problems.append(f"{where}: {dist} is imported but not declared in pyproject.toml")
    assert not problems, "\n".join(problems)


def test_nothing_is_declared_only_to_be_imported_by_the_tests():
    declared = _names(_pyproject()["project"]["dependencies"])
    imported = {dist for dist, *_ in third_party_imports()}
    # accelerate is imported; torch/numpy/... too. A dependency that src/ never imports is dead weight.
    assert declared <= imported, f"declared but never imported by the package: {sorted(declared - imported)}"


def test_coco_and_scikit_learn_are_not_hard_dependencies():
    project = _pyproject()["project"]
    assert "pycocotools" not in _names(project["dependencies"])
    assert "scikit-learn" not in _names(project["dependencies"])
    assert _names(project["optional-dependencies"]["coco"]) == {"pycocotools"}


def test_version_comes_from_the_package_metadata():
    assert explainers.__version__ == _version.__version__ == importlib.metadata.version("explainers")
    assert "__version__ =" not in (SRC / "__init__.py").read_text()  # not a second copy in the root


def test_py_typed_ships_with_the_package():
    assert (SRC / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["explainers"]
