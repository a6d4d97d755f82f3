"""``explainers info`` and ``explainers methods``: describe an explainee, list the methods."""

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


@app.command()
def methods() -> None:
    """List the attribution methods available to ``explainers explain --method``."""
    from explainers.methods import available_methods

    for name in available_methods():
        typer.echo(name)
