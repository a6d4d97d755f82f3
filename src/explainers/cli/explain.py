"""``explainers explain``: run a method over a dataset and write a mask file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from explainers.cli.app import app
from explainers.cli.normalisation import MEAN_OPTION, STD_OPTION, normalisation_kwargs
from explainers.errors import ExplainersError


def parse_value(text: str) -> Any:
    """``3`` → 3, ``0.5`` → 0.5, ``true`` → True, ``null`` → None, ``[1,2]`` → list; else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["key=value", ...]`` → dict (values through :func:`parse_value`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ExplainersError(f"{flag} {item!r} is not KEY=VALUE (e.g. {flag} steps=20)")
        out[key.strip()] = parse_value(value.strip())
    return out


def default_device(device: str | None) -> str:
    """The device to run on: as given (checked: a device this machine lacks is a one-line error), else this
    process's GPU when there is one (``LOCAL_RANK`` under torchrun/accelerate), else the CPU."""
    from explainers.devices import resolve_device

    return str(resolve_device(device))


def open_data(spec: str, split: str | None, data_options: list[str] | None):
    """Open ``KIND:PATH`` (split only when given, so each kind keeps its own default) and describe it."""
    from explainers.data import open_dataset

    options = parse_key_values(data_options, "--data-option")
    dataset = open_dataset(spec, split=split, **options)
    return dataset, getattr(dataset, "name", spec)


@app.command()
def explain(
    method: str = typer.Option(..., "--method", help="Method name (see 'explainers methods')."),
    explainee: str = typer.Option(
        "embedded", "--explainee", "-m", help="Model directory, hub id, timm:NAME, 'embedded' or probe:DIR."
    ),
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    data: str = typer.Option(
        ..., "--data", help="Dataset KIND:PATH (synthetic, folder, imagenet-val, imagenet-seg, coco, voc, masks)."
    ),
    split: str = typer.Option(
        None, "--split", help="Dataset split (default: the kind's own, e.g. test for synthetic)."
    ),
    out: Path = typer.Option(..., "--out", help="Mask file to write (HDF5), e.g. maps.h5."),
    png: Path = typer.Option(
        None, "--png", help="Also write a heatmap overlay PNG per image into this folder."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per method call."),
    target_class: str = typer.Option(
        None,
        "--class",
        help="Class to explain: predicted or target (ground truth). Default: the method's own "
        "(lte: the class its pLTE was trained for), else predicted.",
    ),
    limit: int = typer.Option(None, "--limit", help="Explain only the first N images."),
    option: list[str] = typer.Option(
        None, "--option", help="Method option KEY=VALUE (repeatable), e.g. --option seed=1."
    ),
    explainer: str = typer.Option(
        None, "--explainer", help="Learned explainer folder (plte, lte, leta); same as --option explainer=DIR."
    ),
    head: str = typer.Option(
        None, "--head", help="LETA: the linear head to explain (probe folder); same as --option head=DIR."
    ),
    data_option: list[str] = typer.Option(
        None, "--data-option", help="Dataset option KEY=VALUE, e.g. void=ignore (voc)."
    ),
    dtype: str = typer.Option("float32", "--dtype", help="Stored map precision: float32 or float16."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue an interrupted run (OUT.partial)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing complete OUT."),
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
    """Explain every image of a dataset with one method and write the maps to a mask file (resumable)."""
    from explainers.explain import explain_dataset
    from explainers.methods import get_method
    from explainers.models import load_explainee

    adapter = load_explainee(explainee, device=default_device(device), **normalisation_kwargs(mean, std))
    dataset, name = open_data(data, split, data_option)
    options = parse_key_values(option, "--option")
    for key, value in (("explainer", explainer), ("head", head)):
        if value is not None:
            if key in options:
                raise ExplainersError(f"--{key} and --option {key}=... both given; pass one")
            options[key] = value
    m = get_method(method, adapter, **options)
    summary = explain_dataset(
        m,
        dataset,
        out,
        batch_size=batch_size,
        targets=target_class,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        limit=limit,
        png_dir=png,
        dtype=dtype,
        dataset_spec=name,
        workers=workers,
    )
    if summary is not None:
        resumed = summary.images - summary.written
        typer.echo(
            f"wrote {summary.path}: {summary.images} maps ({method}"
            + (f", {resumed} from the interrupted run" if resumed else "")
            + f") in {summary.seconds:.1f}s"
        )
        if summary.nonfinite_ids:
            typer.echo(f"warning: {len(summary.nonfinite_ids)} map(s) contain NaN/inf", err=True)
