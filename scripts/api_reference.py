"""Write docs/api.md, the API reference, from the package's own signatures and docstrings.

    python scripts/api_reference.py          # rewrite docs/api.md
    python scripts/api_reference.py --check  # exit 1 if docs/api.md is out of date (tests/test_docs.py runs it)

A module's public names are its ``__all__`` when it has one, else the functions and classes it defines whose
names do not start with an underscore. Each entry gets its signature and the first paragraph of its
docstring; a class also lists the public methods and properties it defines itself.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"

#: (module, what it is for), in the order of docs/architecture.md's layers, lowest first.
MODULES: tuple[tuple[str, str], ...] = (
    ("explainers", "The names most users need, importable from the package root."),
    ("explainers.errors", "The exceptions the library raises for bad input (the CLI prints them as one line)."),
    ("explainers.devices", "Choosing a device and reading memory budgets."),
    ("explainers.maps", "Normalising, resizing and drawing attribution maps."),
    ("explainers.distributed", "Splitting work across the processes of `torchrun` / `accelerate launch`."),
    ("explainers.io", "Mask files: the HDF5 files that hold a run's maps."),
    ("explainers.io.atomic", "Writing files so that they are complete or absent."),
    ("explainers.data", "Datasets, named `KIND:PATH`."),
    ("explainers.data.synthetic", "The procedural scenes with exact object masks."),
    ("explainers.data.loader", "Batches of decoded, resized images, optionally from worker processes."),
    ("explainers.models", "Explainee adapters, linear probes, and loading either by name."),
    ("explainers.models.signature", "What checkpoints record about their model, and the checks against it."),
    ("explainers.metrics", "The evaluation metrics and the evaluation of mask files."),
    ("explainers.metrics.report", "Writing an evaluation's report files."),
    ("explainers.training.probe", "Training linear probes on an encoder's embedding."),
    ("explainers.training.classifier", "Training the small ViT explainees of the embedded benchmark."),
    ("explainers.learned", "The learned explainers themselves."),
    ("explainers.learned.lte", "LTE / pLTE: the explainer network, its loss, pre-training and refinement."),
    ("explainers.learned.leta", "LETA: the generic explainer, its pre-training and the transfer rule."),
    ("explainers.methods", "Attribution methods by name, on one base class."),
    ("explainers.heatmap", "Heatmap overlays for a folder of images."),
    ("explainers.explain", "Explaining a dataset into a mask file."),
    ("explainers.benchmark.runner", "The benchmark: every method on each known-truth scenario."),
    ("explainers.demo", "The end-to-end demo."),
)

_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _first_paragraph(obj: object, own: bool = False) -> str:
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "") if own else inspect.getdoc(obj) or ""
    para = doc.split("\n\n", 1)[0].strip()
    return " ".join(line.strip() for line in para.splitlines())


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    return _ADDRESS.sub("", text)


def _public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return [n for n in names if n != "__version__"]
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module.__name__
    )


def _members(cls: type) -> list[str]:
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in ("__call__",):
            continue
        if isinstance(member, property):
            lines.append(f"  - `.{name}` (property): {_first_paragraph(member, own=True)}".rstrip(": "))
        elif isinstance(member, (staticmethod, classmethod)) or inspect.isfunction(member):
            func = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            lines.append(f"  - `.{name}{_signature(func)}`: {_first_paragraph(func, own=True)}".rstrip(": "))
    return lines


def _home(obj: object) -> str | None:
    """The listed module that documents ``obj``: the longest listed prefix of the module defining it."""
    defined = getattr(obj, "__module__", None) or ""
    listed = [m for m, _ in MODULES if defined == m or defined.startswith(m + ".")]
    return max(listed, key=len) if listed else None


def _anchor(module_name: str) -> str:
    return "#" + re.sub(r"[^a-z0-9_-]", "", module_name.lower())


def render() -> str:
    out = [
        "# API reference",
        "",
        "<!-- Generated by `python scripts/api_reference.py` from the signatures and docstrings; do not edit by",
        "hand (tests/test_docs.py fails when it is out of date). -->",
        "",
        "The public functions and classes, module by module, from the lowest layer of",
        "[the architecture](architecture.md) up. Each entry gives the signature and the first paragraph of",
        "the docstring; `help(name)` in Python shows the rest.",
        "",
    ]
    for module_name, purpose in MODULES:
        module = importlib.import_module(module_name)
        out += [f"## `{module_name}`", "", purpose, ""]
        for name in _public_names(module):
            obj = getattr(module, name)
            home = _home(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            if home is not None and home != module_name:
                out.append(f"- `{name}`: see [`{home}`]({_anchor(home)})")
            elif inspect.isclass(obj):
                out.append(f"- **class `{name}{_signature(obj)}`**: {_first_paragraph(obj)}".rstrip(": "))
                out += _members(obj)
            elif callable(obj):
                out.append(f"- `{name}{_signature(obj)}`: {_first_paragraph(obj)}".rstrip(": "))
            else:
                out.append(f"- `{name}` = `{_ADDRESS.sub('', repr(obj))[:80]}`")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print("docs/api.md is out of date: run python scripts/api_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
