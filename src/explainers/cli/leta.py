"""``explainers pretrain leta``, ``explainers train-probe`` and ``explainers heatmap``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from explainers.cli.app import app, pretrain_app
from explainers.cli.normalisation import MEAN_OPTION, STD_OPTION, normalisation_kwargs


def _command_line(ctx: typer.Context) -> str:
    """The command being run, rebuilt from the parsed options (for the records stored next to weights).

    Rebuilt rather than read from ``sys.argv``, which under ``torchrun`` or an embedding program is not
    the ``explainers`` command line. Options given on the command line are kept even when they equal the
    default (so a seed stays visible); options left out are omitted.
    """
    parts = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        given = source is not None and source.name != "DEFAULT"
        if getattr(param, "param_type_name", "") != "option" or value is None or not given:
            continue
        if param.is_flag:
            if value:
                parts.append(param.opts[0])
            elif param.secondary_opts:
                parts.append(param.secondary_opts[0])
        elif param.multiple:
            for item in value:
                parts += [param.opts[0], str(item)]
        else:
            parts += [param.opts[0], str(value)]
    return shlex.join(parts)


@pretrain_app.command("leta")
def pretrain_leta(
    ctx: typer.Context,
    encoder: str = typer.Option(
        "embedded",
        "--encoder",
        "-m",
        help="Target encoder: model directory, hub id, timm:NAME or 'embedded'.",
    ),
    data: str = typer.Option(..., "--data", help="Unlabelled images KIND:PATH (labels are never read)."),
    out: Path = typer.Option(..., "--out", help="Output directory (explainer, log, plot, resumable state)."),
    config: Path = typer.Option(
        None, "--config", help="JSON/TOML file with model and training keys (flat or [model]/[training])."
    ),
    split: str = typer.Option(None, "--split", help="Training split (default: train for synthetic data)."),
    val_split: str = typer.Option(None, "--val-split", help="Split scored after every epoch (e.g. val)."),
    epochs: int = typer.Option(None, "--epochs", help="Passes over the training images."),
    max_steps: int = typer.Option(None, "--max-steps", help="Optimiser steps (overrides --epochs)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per step, over all processes."),
    centres: int = typer.Option(
        None, "--centres", "-k", help="Window centres K per image per step (reference: 1)."
    ),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (AdamW)."),
    radius: int = typer.Option(None, "--radius", help="Window radius r in patches (default 2)."),
    layout: str = typer.Option(
        None, "--layout", help="shared (one backbone, two heads) or two-branch (reference)."
    ),
    backbone: str = typer.Option(
        None, "--backbone", help="encoder (copy of the target encoder), a model spec, or mae:DIR."
    ),
    head_depth: int = typer.Option(
        None, "--head-depth", help="Token-mixing layers per head (reference: 17)."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed for initialisation, image order and window centres."),
    target_dtype: str = typer.Option(
        None, "--target-dtype", help="float32 or bfloat16 (autocast) for the frozen encoder's targets."
    ),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
    sets: list[str] = typer.Option(
        [], "--set", help="Any setting KEY=VALUE (e.g. precision=bf16, workers=4); repeatable."
    ),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted run in OUT."),
    stop_after: int = typer.Option(None, "--stop-after", help="Stop (resumably) after N steps in this call."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Pre-train a LETA explainer for one encoder, task-agnostically (run under torchrun for DDP)."""
    from explainers.learned.leta.config import build_run_config
    from explainers.learned.leta.pretrain import pretrain
    from explainers.training.config import gather_settings

    run = build_run_config(
        gather_settings(config, sets),
        split=split,
        val_split=val_split,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        centres=centres,
        lr=lr,
        radius=radius,
        layout=layout,
        backbone=backbone,
        head_depth=head_depth,
        seed=seed,
        device=device,
        target_dtype=target_dtype,
    )
    path = pretrain(
        encoder,
        data,
        out,
        run,
        encoder_spec=encoder,
        resume=resume,
        progress=progress,
        stop_after=stop_after,
        command=_command_line(ctx),
    )
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        done = (path / "config.json").exists() and (path / "model.safetensors").exists()
        typer.echo(f"{'saved' if done else 'checkpointed (resumable)'}: {path}")


@app.command("train-probe")
def train_probe_cmd(
    ctx: typer.Context,
    encoder: str = typer.Option(
        "embedded",
        "--encoder",
        "-m",
        help="Frozen encoder: model directory, hub id, timm:NAME or 'embedded'.",
    ),
    data: str = typer.Option(..., "--data", help="Labelled images KIND:PATH, e.g. synthetic:DIR."),
    out: Path = typer.Option(..., "--out", help="Output directory (config.json + model.safetensors)."),
    config: Path = typer.Option(None, "--config", help="JSON or TOML file of probe settings (ProbeConfig)."),
    sets: list[str] = typer.Option([], "--set", help="Any setting KEY=VALUE; repeatable."),
    task: str = typer.Option(
        "shape", "--task", help="Labelling to learn (synthetic: shape, color, size, quadrant)."
    ),
    split: str = typer.Option("train", "--split", help="Training split."),
    val_split: str = typer.Option("val", "--val-split", help="Split that picks the L2 weight ('' for none)."),
    test_split: str = typer.Option(
        "test", "--test-split", help="Split whose accuracy is recorded ('' for none)."
    ),
    max_images: int = typer.Option(None, "--max-images", help="Use at most N images per split."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per feature-extraction batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the probe's initialisation."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (feature extraction)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a linear probe (downstream task) on a frozen encoder's CLS embedding.

    Settings: the file, then --set, then the options given on the command line.
    """
    from explainers.training.config import build, gather_settings
    from explainers.training.probe import ProbeConfig, train_probe_to

    settings = gather_settings(config, sets)
    given = {
        "task": task, "split": split, "val_split": val_split, "test_split": test_split,
        "max_images": max_images, "batch_size": batch_size, "seed": seed, "device": device,
    }
    for name, value in given.items():
        source = ctx.get_parameter_source(name)
        if name not in settings or (source is not None and source.name != "DEFAULT"):
            settings[name] = value
    cfg = build(ProbeConfig, settings, "probe")
    probe = train_probe_to(
        encoder, data, out, cfg, encoder_spec=encoder, progress=progress, command=_command_line(ctx)
    )
    typer.echo(f"saved probe '{cfg.task}' to {out}: {json.dumps(probe.metadata['metrics'])}")


@app.command()
def heatmap(
    method: str = typer.Option(..., "--method", help="Any registered method (see 'explainers methods')."),
    explainee: str = typer.Option(
        "embedded", "--explainee", "-m", help="Model directory, hub id, timm:NAME, 'embedded' or probe:DIR."
    ),
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    images: Path = typer.Option(..., "--images", help="Folder of images (png, jpg, ...), or one image file."),
    out: Path = typer.Option(
        Path("output"), "--out", help="Writes OUT/image/NAME.png and OUT/explanation/heatmap-NAME.png."
    ),
    option: list[str] = typer.Option(None, "--option", help="Method option KEY=VALUE (repeatable)."),
    target: int = typer.Option(None, "--target", help="Explain this class instead of the predicted one."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per method call."),
    scale: int = typer.Option(
        None, "--scale", help="Integer upscaling of the written PNGs (default: to at least 224 px)."
    ),
    alpha: float = typer.Option(0.4, "--alpha", help="Opacity of the jet overlay."),
    device: str = typer.Option(
        None, "--device", help="cpu, cuda, cuda:N or auto (default: this process's GPU if any, else CPU)."
    ),
) -> None:
    """Explain every image of a folder with any method; write the resized images and jet overlays."""
    from explainers.cli.explain import default_device, parse_key_values
    from explainers.heatmap import list_images, render_heatmaps
    from explainers.methods import get_method
    from explainers.models import load_explainee

    files = list_images(images)  # before loading anything: a wrong folder fails at once
    options = parse_key_values(option, "--option")
    adapter = load_explainee(
        explainee, device=default_device(device), **normalisation_kwargs(mean, std)
    )  # "probe:DIR" included
    m = get_method(method, adapter, **options)
    written = render_heatmaps(m, files, out, batch_size=batch_size, target=target, scale=scale, alpha=alpha)
    typer.echo(f"wrote {len(written)} heatmaps to {out / 'explanation'} ({method})")

