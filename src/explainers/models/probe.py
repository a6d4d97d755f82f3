"""Linear probes as saved on disk, and a probe as an explainee (``probe:DIR``).

A probe is ``h(z) = W z + b`` on an encoder's post-LayerNorm CLS embedding z: a downstream task (what LETA
explains) on a frozen encoder. On disk a probe is a folder with ``config.json`` (format name and version,
task, class names, the encoder signature of :mod:`explainers.models.signature`, accuracies, how it was
made) and ``model.safetensors`` (``weight`` C×D, ``bias`` C); no pickle. Training one is
:mod:`explainers.training.probe`; the encoder with a probe as its classifier (an explainee for the probe's
task, ``probe:DIR``) is :func:`explainers.models.loading.probe_explainee`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from explainers._version import __version__
from explainers.errors import ModelError
from explainers.io.atomic import atomic_path, write_text_atomic
from explainers.io.folder import read_folder_config

FORMAT_NAME = "explainers-linear-probe"
FORMAT_VERSION = 1


class LinearProbe(nn.Module):
    """A linear head on an encoder's embedding, with what it was trained for."""

    def __init__(
        self,
        linear: nn.Linear,
        *,
        task: str,
        class_names: list[str] | None,
        encoder: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        self.linear = linear
        self.task = task
        self.class_names = class_names
        self.encoder = encoder
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.source = source

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "library_version": __version__,
            "task": self.task,
            "class_names": self.class_names,
            "in_features": self.linear.in_features,
            "num_classes": self.linear.out_features,
            "encoder": self.encoder,
            **self.metadata,
        }
        tensors = {"weight": self.linear.weight.detach().cpu().contiguous()}
        if self.linear.bias is not None:
            tensors["bias"] = self.linear.bias.detach().cpu().contiguous()
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME})
        write_text_atomic(directory / "config.json", json.dumps(payload, indent=2) + "\n")
        return directory


def load_probe(directory: str | Path) -> LinearProbe:
    """Load a probe saved by :meth:`LinearProbe.save_pretrained` / ``explainers train-probe``."""
    directory = Path(directory).expanduser()
    cfg = read_folder_config(
        directory,
        what="a linear probe",
        format_name=FORMAT_NAME,
        newest_version=FORMAT_VERSION,
        how_to_make="make one with `explainers train-probe`",
    )
    try:
        tensors = load_file(str(directory / "model.safetensors"))
    except Exception as exc:
        raise ModelError(f"cannot read the probe weights in {directory}: {exc}") from None
    weight = tensors["weight"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if "bias" in tensors:
            linear.bias.copy_(tensors["bias"])
    meta = {
        k: v
        for k, v in cfg.items()
        if k
        not in (
            "format",
            "version",
            "task",
            "class_names",
            "encoder",
            "in_features",
            "num_classes",
            "library_version",
        )
    }
    return LinearProbe(
        linear.eval(),
        task=cfg.get("task", "?"),
        class_names=cfg.get("class_names"),
        encoder=cfg.get("encoder", {}),
        metadata=meta,
        source=str(directory),
    )
