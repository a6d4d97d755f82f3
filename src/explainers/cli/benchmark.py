"""``explainers benchmark``: every method on the known-truth scenarios, ranked into one leaderboard."""

from __future__ import annotations

from pathlib import Path

import typer

from explainers.benchmark.scenarios import DEFAULT_IMAGES
from explainers.cli.app import app
from explainers.errors import ExplainersError


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


@app.command()
def benchmark(
    out: Path = typer.Option(Path("explainers-benchmark"), "--out", help="Output folder (reused to resume)."),
    scenarios: str = typer.Option(
        None, "--scenarios", help="Comma-separated scenarios (default: every one whose explainee ships)."
    ),
    methods: str = typer.Option(None, "--methods", help="Comma-separated methods (default: every registered one)."),
    images: int = typer.Option(DEFAULT_IMAGES, "--images", help="Test scenes per scenario."),
    explainee_for: list[str] = typer.Option(
        None, "--explainee-for", help="SCENARIO=DIR: explain this scenario with another explainee (repeatable)."
    ),
    device: str = typer.Option(
        None, "--device", help="cpu, cuda, cuda:N or auto (default: this process's GPU if any, else CPU)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Explain the benchmark scenarios with every method, evaluate them and write the leaderboard
    (OUT/leaderboard.html, .md, .json)."""
    from explainers.benchmark.runner import run_benchmark

    explainees = {}
    for item in explainee_for or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ExplainersError(f"--explainee-for {item!r} is not SCENARIO=DIR (e.g. cue=my-cue-vit)")
        explainees[name.strip()] = path.strip()
    run_benchmark(
        out,
        scenarios=_names(scenarios),
        methods=_names(methods),
        images=images,
        explainees=explainees,
        device=device,
        progress=not quiet,
        echo=typer.echo,
    )
