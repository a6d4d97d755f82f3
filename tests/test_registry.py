"""The one registry class (methods, metrics, dataset kinds), the ``methods``/``metrics`` commands that print
what the registries hold, and the README's method and metric tables checked against them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from explainers._registry import Registry
from explainers.cli import main
from explainers.cli.info import markdown_table, method_rows, metric_rows
from explainers.data import DATASETS
from explainers.errors import DatasetError, ExplainersError
from explainers.methods import METHODS, Method
from explainers.metrics import METRICS

README = Path(__file__).resolve().parents[1] / "README.md"


# ------------------------------------------------------------------------------------------ the class
def test_register_lookup_and_order():
    reg: Registry[object] = Registry("widget", unknown="unknown widget {name!r}; valid: {names}")
    a, b = object(), object()
    assert reg.register("b", b) is b

    @reg.register("a")
    class A:  # the decorator form returns the class itself
        pass

    reg.register_lazy("c", "json:dumps")
    assert reg.names() == ["b", "a", "c"] and list(reg) == ["b", "a", "c"] and len(reg) == 3
    assert reg.get("a") is A and reg["b"] is b and "c" in reg and "d" not in reg
    assert reg.get("c") is json.dumps  # imported on first use
    assert reg.names() == ["b", "a", "c"]  # an imported lazy entry keeps its place
    with pytest.raises(ExplainersError, match=r"^unknown widget 'd'; valid: b, a, c$"):
        reg.get("d")
    reg.register("b", b)  # the same entry again is fine (a module imported twice)
    for name, entry in (("b", a), ("c", a)):
        with pytest.raises(ValueError, match="registered twice"):
            reg.register(name, entry)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register_lazy("a", "json:loads")
    with pytest.raises(ValueError, match="module:attribute"):
        reg.register_lazy("e", "json")


def test_sorted_registry_error_class_context_and_builtins():
    message = "no kind {name!r} in {spec!r}; kinds: {names}"
    reg: Registry[int] = Registry("kind", builtins=("json",), unknown=message, error=DatasetError, sort=True)
    assert not reg._loaded  # builtins are imported at the first lookup, not before
    reg.register("z", 1)
    reg.register("m", 2)
    assert reg.names() == ["m", "z"] and reg._loaded
    with pytest.raises(DatasetError, match=r"^no kind 'q' in 'q:/x'; kinds: m, z$"):
        reg.get("q", spec="q:/x")


def test_the_three_registries_are_one_class():
    assert all(isinstance(r, Registry) for r in (METHODS, METRICS, DATASETS))
    assert {"gae", "lte", "leta"} <= set(METHODS) and {"pos", "miou"} <= set(METRICS)
    assert {"synthetic", "coco", "voc"} <= set(DATASETS)
    assert issubclass(METHODS["gae"], Method)


# ------------------------------------------------------------------------------------------ the commands
def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.mark.parametrize("command", ["methods", "metrics"])
def test_commands_print_the_registry(command, capsys):
    registry = METHODS if command == "methods" else METRICS
    code, out, _ = run([command], capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.strip().splitlines()[1:]]
    assert listed == registry.names()
    code, out, _ = run([command, "--format", "json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == registry.names()
    if command == "methods":
        gae = next(r for r in rows if r["name"] == "gae")
        assert gae["needs"] == "ViT attention, gradients" and gae["cost"] == "2–5 forwards"
        assert next(r for r in rows if r["name"] == "rise")["needs"] == "any classifier"
    else:
        pos = next(r for r in rows if r["name"] == "pos")
        assert pos["better"] == "lower" and pos["family"] == "perturbation"
    code, out, _ = run([command, "--format", "markdown"], capsys)
    assert code == 0 and out.startswith("| name |")
    code, _, err = run([command, "--format", "xml"], capsys)
    assert code == 2 and err.strip() == "explainers: error: --format must be text, markdown or json, got 'xml'"


# ------------------------------------------------------------------------------------------ the README
def readme_table(heading: str) -> list[str]:
    """The Markdown table lines right under ``heading`` in the README."""
    lines = README.read_text().splitlines()
    start = lines.index(heading)
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    assert table, f"no table under {heading}"
    return table


def test_readme_method_table_is_the_registry():
    expected = markdown_table(method_rows(library_only=True)).splitlines()
    assert readme_table("## Methods") == expected, (
        "README's method table differs from the registry: paste `explainers methods --format markdown`"
    )


def test_readme_metric_table_names_every_metric_with_its_direction():
    """Every row: backticked names (``a`` / ``b`` or ``a``, ``b``) and their directions (one for all, or
    one per name, ``/``-separated); together exactly the registered metrics."""
    seen: dict[str, str] = {}
    for row in readme_table("## Metrics")[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        directions = [d.strip() for d in cells[1].split("/")]
        if len(directions) == 1:
            directions *= len(names)
        assert len(directions) == len(names), row
        for name, direction in zip(names, directions, strict=True):
            assert name not in seen, f"{name} twice in the README's metric table"
            seen[name] = direction
    library = {row["name"]: row["better"] for row in metric_rows(library_only=True)}
    assert seen == library
