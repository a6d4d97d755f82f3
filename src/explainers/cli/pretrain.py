"""``explainers pretrain lte``: pre-train a pLTE explainer (other explainers add their own subcommands to
``pretrain_app``, e.g. ``pretrain leta``)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from explainers.cli.app import pretrain_app


@pretrain_app.command("lte")
def pretrain_lte_command(
    explainee: str = typer.Option(
        ..., "--explainee", "-m", help="Model directory, hub id, timm:NAME, 'embedded' or probe:DIR."
    ),
    data: str = typer.Option(
        ..., "--data", "-d", help="Training images as KIND:PATH (e.g. synthetic:./scenes)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder (best checkpoint, training state, log, plot)."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="JSON or TOML file of LTE settings (LTEConfig keys; see configs/)."
    ),
    class_mode: str | None = typer.Option(
        None, "--class", help="Explain the 'target' (label) or 'predicted' class."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Dataset split (synthetic data: train by default)."
    ),
    sets: list[str] = typer.Option(
        [], "--set", help="Override one setting, KEY=VALUE (JSON value; e.g. device=cuda, precision=bf16); repeatable."
    ),
    device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda or cuda:N."),
    workers: int | None = typer.Option(None, "--workers", help="Image-decoding processes."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Pre-train a pLTE explainer for an explainee; rerun the same command to resume an interrupted run.

    Runs on one process, or on several under torchrun / accelerate launch
    (e.g. `torchrun --nproc_per_node 2 $(which explainers) pretrain lte ...`).
    """
    from explainers.learned.lte.config import LTEConfig
    from explainers.learned.lte.pretrain import pretrain_lte
    from explainers.training.config import gather_settings

    settings = gather_settings(config, sets)
    if class_mode is not None:
        settings["class_mode"] = class_mode
    if split is not None:
        settings["split"] = split
    if device is not None:
        settings["device"] = device
    if workers is not None:
        settings["workers"] = workers
    cfg = LTEConfig.from_dict(settings)
    # Recorded with the checkpoint, so that the shipped weights say how they were made.
    parts = ["explainers", "pretrain", "lte", "--explainee", explainee, "--data", data, "--out", str(out)]
    if config is not None:
        parts += ["--config", str(config)]
    if class_mode is not None:
        parts += ["--class", class_mode]
    if split is not None:
        parts += ["--split", split]
    if device is not None:
        parts += ["--device", device]
    if workers is not None:
        parts += ["--workers", str(workers)]
    for item in sets:
        parts += ["--set", item]
    command = shlex.join(parts)
    result = pretrain_lte(explainee, data, out, cfg, progress=progress, command=command)
    if not result.main_process:
        return
    if result.best_epoch is None:
        typer.echo(f"no epoch finished; state in {result.out_dir}")
        return
    typer.echo(
        f"best epoch {result.best_epoch}: validation POS-AUC {result.best_val_auc:.3f}; "
        f"explainer saved in {result.out_dir}"
    )
    if result.collapse:
        typer.echo(f"WARNING: {result.collapse}", err=True)
