"""``explainers info``, ``explainers methods`` and ``explainers metrics``: describe an explainee, list the
methods and the metrics from their registries."""

from __future__ import annotations

import json

import typer

from explainers.cli.app import app
from explainers.cli.normalisation import MEAN_OPTION, STD_OPTION, normalisation_kwargs


@app.command()
def info(
    explainee: str = typer.Option(
        "embedded", "--explainee", "-m", help="Model directory, hub id, timm:NAME, 'embedded' or probe:DIR."
    ),
    device: str = typer.Option(
        None, "--device", help="cpu, cuda, cuda:N or auto (default: this process's GPU if any, else CPU)."
    ),
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
) -> None:
    """Print what the adapter reads off an explainee (size, normalisation, patch grid, prefix tokens)."""
    from explainers.cli.explain import default_device
    from explainers.models import load_explainee

    adapter = load_explainee(explainee, device=default_device(device), **normalisation_kwargs(mean, std))
    typer.echo(json.dumps(adapter.describe(), indent=2))


# ---------------------------------------------------------------------------------------------- tables
#: How a method's needs read in tables (a ViT's attention maps imply the ViT).
NEED_TEXT = {"vit": "ViT", "attention": "ViT attention", "gradients": "gradients", "checkpoint": "trained explainer"}


def method_rows(library_only: bool = False) -> list[dict[str, str]]:
    """One row per registered method: name, what the map is, needs, cost class, reference."""
    from explainers.methods import METHODS
    from explainers.methods.base import COST_TEXT, Need

    rows = []
    for name, cls in METHODS.items():
        if library_only and not cls.__module__.startswith("explainers."):
            continue
        needs = [need for need in Need if need in cls.needs]
        if Need.ATTENTION in needs and Need.VIT in needs:
            needs.remove(Need.VIT)
        rows.append(
            {
                "name": name,
                "what": cls.summary,
                "needs": ", ".join(NEED_TEXT[n.value] for n in needs) or "any classifier",
                "cost": COST_TEXT[cls.cost],
                "reference": cls.reference,
            }
        )
    return rows


def metric_rows(library_only: bool = False) -> list[dict[str, str]]:
    """One row per registered metric: name, direction, family, what the value is, class conventions, needs."""
    from explainers.metrics import METRICS

    rows = []
    for name, cls in METRICS.items():
        if library_only and not cls.__module__.startswith("explainers."):
            continue
        needs = [what for what, flag in (("ground truth", cls.needs_gt), ("patch grid", cls.needs_grid)) if flag]
        rows.append(
            {
                "name": name,
                "better": cls.direction,
                "family": cls.category,
                "value": cls.unit,
                "classes": ", ".join(cls.classes),
                "needs": ", ".join(needs) or "-",
            }
        )
    return rows


def markdown_table(rows: list[dict[str, str]], code_column: str = "name") -> str:
    """A Markdown table of ``rows`` (the README's method table is this output); ``code_column`` in backticks."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"`{row[c]}`" if c == code_column else row[c].replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table(rows: list[dict[str, str]]) -> str:
    """Rows as aligned plain-text columns."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


FORMAT_OPTION = typer.Option("text", "--format", help="text (aligned columns), markdown or json.")


def _print_table(rows: list[dict[str, str]], fmt: str) -> None:
    from explainers.errors import ExplainersError

    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif fmt == "markdown":
        typer.echo(markdown_table(rows))
    elif fmt == "text":
        typer.echo(text_table(rows))
    else:
        raise ExplainersError(f"--format must be text, markdown or json, got {fmt!r}")


@app.command()
def methods(fmt: str = FORMAT_OPTION) -> None:
    """List the attribution methods (``explain --method``): what each map is, what it needs, its cost."""
    _print_table(method_rows(), fmt)


@app.command()
def metrics(fmt: str = FORMAT_OPTION) -> None:
    """List the metrics (``evaluate --metrics``): direction, family, value, class conventions, needs."""
    _print_table(metric_rows(), fmt)
