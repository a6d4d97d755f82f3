"""``explainers evaluate``: score mask files with the metrics and write JSON, Markdown and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from explainers.cli.app import app
from explainers.cli.explain import default_device, open_data, parse_key_values
from explainers.cli.normalisation import MEAN_OPTION, STD_OPTION, normalisation_kwargs
from explainers.errors import ExplainersError


def parse_metric_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["adp.normalize=minmax", ...]`` → ``{"adp": {"normalize": "minmax"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_key_values(items, "--metric-option").items():
        metric, sep, name = key.partition(".")
        if not sep or not metric or not name:
            raise ExplainersError(
                f"--metric-option {key}=… must be METRIC.KEY=VALUE, e.g. insertion.steps=20"
            )
        out.setdefault(metric, {})[name] = value
    return out


@app.command()
def evaluate(
    explainee: str = typer.Option(
        "embedded", "--explainee", "-m", help="The explainee the maps were made for."
    ),
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    data: str = typer.Option(..., "--data", help="Dataset KIND:PATH the maps were made on."),
    split: str = typer.Option(None, "--split", help="Dataset split (default: the kind's own)."),
    masks: list[Path] = typer.Option(
        ..., "--masks", help="Mask file(s) from 'explainers explain' (repeatable)."
    ),
    metrics: str = typer.Option(
        "all", "--metrics", help="Comma-separated metric names, or 'all' (those that apply)."
    ),
    target_class: str = typer.Option(
        None,
        "--class",
        help="Class scored: target or predicted (default: the one the mask files were made for).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (metrics.json, .npz, .md, curves.png, heatmaps.png)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Images loaded per step."),
    max_batch: int = typer.Option(
        64, "--max-batch", help="Most perturbed images per explainee forward (memory knob)."
    ),
    nonfinite: str = typer.Option(
        "fail",
        "--nonfinite",
        help="NaN/inf in maps or per-image metric values: fail (naming the images), or exclude them "
        "(counted in the report).",
    ),
    allow_mismatch: bool = typer.Option(
        False,
        "--allow-mismatch",
        help="Score mask files made for another explainee, dataset, labelling, class convention or head "
        "anyway (recorded in the report); refused by default.",
    ),
    metric_option: list[str] = typer.Option(
        None, "--metric-option", help="METRIC.KEY=VALUE, e.g. adp.normalize=minmax."
    ),
    data_option: list[str] = typer.Option(
        None, "--data-option", help="Dataset option KEY=VALUE, e.g. void=ignore (voc)."
    ),
    device: str = typer.Option(
        None, "--device", help="cpu, cuda, cuda:N or auto (default: this process's GPU if any, else CPU)."
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        help="Processes decoding images while the model runs (default: min(4, CPUs); 0: in this process).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Compute perturbation, deletion/insertion, ADP/PIC and segmentation metrics from mask files."""
    from explainers.metrics import available_metrics, evaluate_maskfiles
    from explainers.metrics.report import comparison_table, write_report
    from explainers.models import load_explainee

    if metrics.strip() != "all":
        valid = available_metrics()
        unknown = [n.strip() for n in metrics.split(",") if n.strip() and n.strip() not in valid]
        if unknown:
            raise ExplainersError(
                f"unknown metric(s) {', '.join(unknown)}; valid metrics: {', '.join(valid)}"
            )
    for flag, value in (("--batch-size", batch_size), ("--max-batch", max_batch)):
        if value < 1:
            raise ExplainersError(f"{flag} must be at least 1, got {value}")
    options = parse_metric_options(metric_option)
    adapter = load_explainee(explainee, device=default_device(device), **normalisation_kwargs(mean, std))
    dataset, name = open_data(data, split, data_option)
    result = evaluate_maskfiles(
        adapter,
        dataset,
        masks,
        metrics,
        classes=target_class,
        batch_size=batch_size,
        max_batch=max_batch,
        nonfinite=nonfinite,
        allow_mismatch=allow_mismatch,
        metric_options=options,
        progress=progress,
        dataset_spec=name,
        workers=workers,
    )
    if result is None:  # a non-main process of a sharded run
        return
    paths = write_report(result, out)
    for line in result.warnings:
        typer.echo(f"warning: {line}", err=True)
    typer.echo("\n".join(comparison_table(result)))
    typer.echo(f"\nwrote {', '.join(str(p) for p in paths.values())} ({result.timing['seconds']:.1f}s)")
