"""``explainers demo``: the embedded benchmark end to end."""

from __future__ import annotations

from pathlib import Path

import typer

from explainers.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("explainers-demo"), "--out", help="Output folder."),
    retrain: bool = typer.Option(
        False, "--retrain", help="Train the explainee again instead of loading the shipped one."
    ),
    explainee: str = typer.Option(
        None, "--explainee", help="A model directory trained on the default scenes, instead of the shipped one."
    ),
    images: int = typer.Option(32, "--images", help="Test images to explain and evaluate."),
    accuracy_images: int = typer.Option(1000, "--accuracy-images", help="Test images for the explainee's accuracy."),
    methods: str = typer.Option(None, "--methods", help="Comma-separated methods (default: all the demo runs)."),
    downstream: bool = typer.Option(
        True,
        "--downstream/--no-downstream",
        help="Also explain the probes' downstream tasks (colour, size) with the pre-trained LETA explainer.",
    ),
    leaderboard: bool = typer.Option(
        True,
        "--leaderboard/--no-leaderboard",
        help="End with the leaderboard of the comparison and a quick run of the other benchmark scenarios.",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    device: str = typer.Option(
        None, "--device", help="cpu, cuda, cuda:N or auto (default: this process's GPU if any, else CPU)."
    ),
) -> None:
    """Generate the embedded data, load the shipped explainee, explain and evaluate every method, then
    explain downstream tasks of the same encoder with LETA."""
    from explainers.cli.explain import default_device
    from explainers.demo import run_demo

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    run_demo(
        out,
        retrain=retrain,
        explainee=explainee,
        num_images=images,
        accuracy_images=accuracy_images,
        methods=names,
        downstream=downstream,
        leaderboard=leaderboard,
        progress=not quiet,
        echo=typer.echo,
        device=default_device(device),
    )
