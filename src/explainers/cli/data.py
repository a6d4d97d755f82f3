"""``explainers data synth`` and ``explainers train-classifier``: the embedded benchmark's data and explainee."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from explainers.cli.app import app, data_app
from explainers.cli.explain import parse_key_values
from explainers.errors import ExplainersError


def build_config(cls: type, config_file: Path | None, overrides: list[str] | None, flag: str = "--set") -> Any:
    """A config dataclass from defaults, then a JSON file, then ``KEY=VALUE`` overrides; unknown keys are
    refused with the list of valid ones."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values.update(json.loads(Path(config_file).read_text()))
        except FileNotFoundError:
            raise ExplainersError(f"config file not found: {config_file}") from None
        except json.JSONDecodeError as exc:
            raise ExplainersError(f"config file {config_file} is not valid JSON: {exc}") from None
    values.update(parse_key_values(overrides, flag))
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ExplainersError(f"unknown {cls.__name__} keys {unknown}; valid keys: {', '.join(sorted(valid))}")
    return cls(**values)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write (must not exist or be empty)."),
    config: Path = typer.Option(None, "--config", help="JSON file of SyntheticConfig values."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config value, KEY=VALUE (repeatable)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: the config's)."),
    device: str = typer.Option(None, "--device", help="auto (default), cpu, cuda or cuda:N."),
    workers: int = typer.Option(None, "--workers", help="Image-decoding processes (non-synthetic data)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing non-empty folder (an interrupted run in it starts over)."
    ),
) -> None:
    """Generate the procedural scenes with exact object masks. Defaults = the shipped explainee's data."""
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    cfg = build_config(SyntheticConfig, config, [*(set_ or []), *([f"seed={seed}"] if seed is not None else [])])
    path = generate_synthetic(out, cfg, overwrite=overwrite)
    counts = ", ".join(f"{s} {cfg.split_size(s)}" for s in ("train", "val", "test"))
    task = cfg.default_task()
    typer.echo(f"wrote {path} ({counts}; {task} classes: {', '.join(cfg.class_names(task))})")


@app.command("train-classifier")
def train_classifier_cmd(
    data: str = typer.Option(
        ..., "--data", help="Labelled images KIND:PATH: synthetic:DIR, folder:DIR, imagenet-val:DIR, ..."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the Hugging Face model directory."),
    config: Path = typer.Option(None, "--config", help="JSON or TOML file of ClassifierTrainConfig values."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config value, KEY=VALUE (repeatable)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: the config's)."),
    device: str = typer.Option(None, "--device", help="auto (default), cpu, cuda or cuda:N."),
    workers: int = typer.Option(None, "--workers", help="Image-decoding processes (non-synthetic data)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing non-empty folder (an interrupted run in it starts over)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a small ViT classifier from scratch (the embedded explainee on synthetic scenes, or one for
    any labelled dataset) and save it as a HF model directory; OUT/log.jsonl grows epoch by epoch.
    Rerun the same command to resume an interrupted run."""
    import shlex
    import sys

    from explainers.training.classifier import ClassifierTrainConfig, train_classifier
    from explainers.training.config import gather_settings

    given = {"seed": seed, "device": device, "workers": workers}
    extra = [f"{k}={json.dumps(v)}" for k, v in given.items() if v is not None]
    settings = gather_settings(config, [*(set_ or []), *extra])
    cfg = ClassifierTrainConfig.from_dict(settings)
    command = shlex.join(["explainers", *sys.argv[1:]]) if sys.argv else None
    record = train_classifier(data, out, cfg, progress=progress, overwrite=overwrite, command=command)
    if record.get("main_process") is False:
        return
    typer.echo(
        f"saved {out}: test accuracy {record['test_accuracy']:.2%} "
        f"(val {record['val_accuracy']:.2%}, epoch {record['selected_epoch']}) "
        f"after {record['train_wall_seconds']:.0f} s"
    )
