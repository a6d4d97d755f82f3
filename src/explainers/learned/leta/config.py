"""LETA configuration: the explainer's architecture and its pre-training run (docs/learned-explainers.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from explainers.devices import resolve_device
from explainers.errors import ExplainersError
from explainers.training.config import build
from explainers.training.config import read_config_file as read_shared_config_file
from explainers.training.loop import PRECISIONS

LAYOUTS = ("shared", "two-branch")


@dataclass
class LETAConfig:
    """Architecture of a LETA explainer.

    radius: window radius r in patches (Chebyshev; r = 2 → 5×5 windows); also the transfer rule's
        pooling radius.
    layout: ``shared`` (ours: one backbone, a ψ⁺ head and a ψ⁻ head) or ``two-branch`` (the reference:
        a backbone + head per branch).
    backbone: ``encoder`` (a copy of the target encoder's own ViT), a model spec that ``load_explainee``
        accepts (HF directory / hub id / ``timm:NAME``), or ``mae:DIR`` (a Hugging Face ViTMAE
        pre-training directory, mask ratio 0).
    backbone_init: ``pretrained`` (the backbone's weights) or ``random`` (same architecture, fresh init).
    mae_decoder: with ``mae:DIR``, read the MAE decoder's tokens (the reference's encoder–decoder) instead
        of the encoder's.
    head_depth: token-mixing layers per head (the reference uses 17 on ViT-B).
    head_dim: width of the head's middle layers; None = the encoder's embedding size D.
    """

    radius: int = 2
    layout: str = "shared"
    backbone: str = "encoder"
    backbone_init: str = "pretrained"
    mae_decoder: bool = True
    head_depth: int = 4
    head_dim: int | None = None

    def validate(self) -> None:
        if self.radius < 0:
            raise ExplainersError(f"radius must be >= 0, got {self.radius}")
        if self.layout not in LAYOUTS:
            raise ExplainersError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.backbone_init not in ("pretrained", "random"):
            raise ExplainersError(
                f"backbone_init must be 'pretrained' or 'random', got {self.backbone_init!r}"
            )
        if self.head_depth < 1:
            raise ExplainersError(f"head_depth must be >= 1, got {self.head_depth}")
        if self.head_dim is not None and self.head_dim < 1:
            raise ExplainersError(f"head_dim must be positive, got {self.head_dim}")


@dataclass
class PretrainConfig:
    """One pre-training run (labels are never read).

    centres: K window centres sampled per image per step (the reference uses 1; several reuse one
        explainer forward for K targets, and the targets dominate the cost anyway).
    epochs / max_steps: run length; ``max_steps`` wins when set. The LR warms up linearly over
        ``warmup`` (fraction of all steps) and then follows a cosine to zero.
    target_batch: masked copies per encoder forward (memory bound; all copies of a step are computed,
        in chunks of this size).
    target_dtype: ``float32`` or ``bfloat16`` (autocast for the frozen encoder's training targets;
        validation always uses float32).
    val_images: images of ``val_split`` scored after every epoch (fixed centres), 0 to skip.
    cache_images: decode the training images once and keep them in memory (uint8) when they fit in
        ``cache_limit_mb``.
    device (``auto``, ``cpu``, ``cuda``), precision (``fp32``, ``bf16``, ``fp16``: autocast of the
        explainer's forward, float32 weights), grad_accum (micro-batches per optimiser step: each
        process's share of a batch in that many parts), workers (image-decoding processes).
    """

    split: str | None = None
    val_split: str | None = None
    batch_size: int = 64
    centres: int = 4
    epochs: int = 10
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    grad_clip: float | None = 1.0
    target_batch: int = 1024
    target_dtype: str = "float32"
    val_images: int = 256
    log_every: int = 10
    save_every: int = 200
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    grad_accum: int = 1
    workers: int | None = None
    cache_images: bool = True
    cache_limit_mb: int = 4096

    def validate(self) -> None:
        for name in ("batch_size", "centres", "epochs", "target_batch", "log_every", "save_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ExplainersError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ExplainersError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0 <= self.warmup < 1:
            raise ExplainersError(f"warmup is a fraction of the run in [0, 1), got {self.warmup}")
        if self.target_dtype not in ("float32", "bfloat16"):
            raise ExplainersError(f"target_dtype must be float32 or bfloat16, got {self.target_dtype!r}")
        if self.lr <= 0:
            raise ExplainersError(f"lr must be positive, got {self.lr}")
        resolve_device(self.device)  # the one device check (one line when unusable)
        if self.precision not in PRECISIONS:
            raise ExplainersError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workers is not None and self.workers < 0:
            raise ExplainersError(f"workers must be 0 or more (or null: the default), got {self.workers}")


@dataclass
class RunConfig:
    """Both halves, as read from ``--config FILE`` (flat keys, or ``model`` / ``training`` tables)."""

    model: LETAConfig = field(default_factory=LETAConfig)
    training: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.model), "training": asdict(self.training)}


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def build_run_config(data: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """Make a :class:`RunConfig` from a dict (flat or nested) plus overrides (None values ignored).

    Keys, types and finiteness are checked by the shared mechanism (:mod:`explainers.training.config`).
    """
    data = dict(data or {})
    model_kw: dict[str, Any] = dict(data.pop("model", {}) or {})
    train_kw: dict[str, Any] = dict(data.pop("training", {}) or {})
    flat = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    model_names, train_names = _names(LETAConfig), _names(PretrainConfig)
    unknown = sorted(set(flat) - model_names - train_names)
    unknown += sorted(set(model_kw) - model_names) + sorted(set(train_kw) - train_names)
    if unknown:
        raise ExplainersError(
            f"unknown LETA config keys: {', '.join(unknown)}; model keys: {', '.join(sorted(model_names))}; "
            f"training keys: {', '.join(sorted(train_names))}"
        )
    for key, value in flat.items():
        (model_kw if key in model_names else train_kw)[key] = value
    run = RunConfig(model=build(LETAConfig, model_kw, "LETA"), training=build(PretrainConfig, train_kw, "LETA"))
    run.model.validate()
    run.training.validate()
    return run


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file (the shared reader)."""
    return read_shared_config_file(path)
