"""LTE configuration: one flat, JSON-serialisable record of every knob (explainer, loss, training,
refinement).

Defaults are the published method's (docs/learned-explainers.md), including its quirks, except where the
reference code has a bug (the learning-rate schedule: correct by default, the reference's bug as
``schedule="reference"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from explainers.devices import ByteSize, parse_bytes, resolve_device
from explainers.errors import ExplainersError
from explainers.training.config import ConfigError, build, read_config_file
from explainers.training.loop import PRECISIONS

ACTIVATIONS = ("sigmoid", "relu", "softmax", "none")
PREDICTION_LOSSES = ("ce", "logit", "ce-neg")
MASK_LOSSES = ("softplus", "l1", "entropy")
CLASS_MODES = ("target", "predicted")
SCHEDULES = ("linear", "reference", "constant")
SELECTIONS = ("pos", "neg", "pos+deletion")
HEADS = ("patch", "decoder")


class LTEConfigError(ExplainersError):
    """An LTE configuration value or key that cannot be used."""


@dataclass
class LTEConfig:
    """Every LTE setting. Unknown keys are refused (:meth:`from_dict`) with the list of valid ones.

    Explainer:
        activation: patch-score activation: ``sigmoid`` (published), ``relu``, ``softmax`` over patches,
            ``none`` (raw scores; the upsampled mask is clamped to [0, 1], as it is for ``relu``).
        freeze_blocks: freeze the first k encoder blocks too (the embeddings are always frozen).
        head_init_std: std of the normal init of the head's weights (biases start at zero).
        head_init_bias: initial bias of the head's output logit (0: the reference's mask ≈ 0.5 everywhere).
            A positive value starts from a mask near 1, the whole image kept, so that training learns what
            can be removed. It matters when the explainee's evidence only counts at full strength: a cue
            colour that a half-dimmed image no longer shows gives the prediction term no gradient at a mask
            of 0.5, and the mask term then drives that class's masks to zero.
        head: ``patch`` (the reference: a per-patch MLP, mask = bilinear upsampling of the patch grid) or
            ``decoder`` (beyond the reference: a light upsampling decoder that also sees the image and
            draws a pixel-level mask; see ``PixelDecoder``).
        class_conditioned: condition the explainer on the explained class (one read-out of the patch head
            per class), so that it can draw a different mask per class of one image. The reference
            explainer is class-agnostic.
    Loss:
        class_mode: ``target`` (ground-truth label) or ``predicted`` (the explainee's clean argmax).
        prediction_loss: ``ce`` (published), ``logit`` (−logit of c), ``ce-neg`` ((CE(pos) − CE(neg))/2).
        mask_loss: ``softplus`` = mean softplus(s), what the reference calls "bce" (the faithful default);
            ``l1`` = mean |s|; ``entropy`` = entropy of the patch distribution (softmax activation only).
        lambda_pred, lambda_mask: loss weights (published λ_mask: 50 for ViT-B, 30 for ViT-S).
        lambda_mask_warmup: fraction of pre-training over which λ_mask ramps linearly from 0 (0: full
            weight from the first step, the reference).
    Data:
        split: dataset split the subsets are drawn from (None: ``train`` for synthetic data, else the
            dataset's default); train_per_class / val_per_class: class-uniform, disjoint subset sizes
            (train_per_class None: every labelled image of a class not drawn for validation).
    Pre-training:
        epochs, batch_size (global, over all processes), lr, weight_decay (AdamW), warmup_fraction,
        schedule: ``linear`` (warm-up over ``warmup_fraction`` of the real steps, then linear decay to 0),
            ``reference`` (the published code's bug: warm-up length computed from a folder of
            ``reference_folder_size`` images, so the LR only ramps from 0 to ≈ lr·steps/warmup — for the
            published setup 1,000 images, batch 32, 52 epochs, 50k folder: 0 → ≈ 2e-4), ``constant``.
        seed, eval_batch_size (perturbed images per explainee forward when scoring), checkpoint_every (also
            save the training state every N optimiser steps; 0 = only at epoch ends), validate_initial
            (also score the untrained explainer, logged as epoch 0; never selected).
    Running (do not change the trained weights' meaning; see docs/training.md):
        device (``auto``: CUDA when available, else CPU; ``cpu``; ``cuda``), precision (``fp32``,
        ``bf16``, ``fp16``: autocast with float32 master weights), grad_accum (micro-batches per
        optimiser step), workers (image-decoding processes).
    Refinement (LTE):
        refine_steps (scored masks per image, the first being the pLTE mask), refine_lr,
        refine_weight_decay, refine_select (``pos``: lowest POS-AUC wins; ``neg``: highest NEG-AUC;
        ``pos+deletion``: lowest mean of POS-AUC and deletion AUC, read off the same curve: the probability
        breaks the ties of the per-image accuracy AUC, which moves in steps of 5),
        refine_stop_below (pos, pos+deletion: stop once the best is below), refine_stop_above (neg: stop
        once above),
        memory_budget (bytes, or e.g. ``"4GiB"``, that refinement may use for the images it refines at
        once; None = a fraction of what the device has free; see ``learned/lte/refine.py``).
    """

    activation: str = "sigmoid"
    freeze_blocks: int = 0
    head_init_std: float = 0.02
    head_init_bias: float = 0.0
    head: str = "patch"
    class_conditioned: bool = False

    class_mode: str = "target"
    prediction_loss: str = "ce"
    mask_loss: str = "softplus"
    lambda_pred: float = 1.0
    lambda_mask: float = 50.0
    lambda_mask_warmup: float = 0.0

    split: str | None = None
    train_per_class: int | None = None
    val_per_class: int = 1

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.2
    schedule: str = "linear"
    reference_folder_size: int = 50000
    seed: int = 42
    eval_batch_size: int = 64
    checkpoint_every: int = 0
    validate_initial: bool = True

    refine_steps: int = 25
    refine_lr: float = 1e-4
    refine_weight_decay: float = 0.01
    refine_select: str = "pos"
    refine_stop_below: float = 6.0
    refine_stop_above: float = 89.0
    memory_budget: ByteSize | int | None = None

    device: str = "auto"
    precision: str = "fp32"
    grad_accum: int = 1
    workers: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        choices = {
            "activation": ACTIVATIONS,
            "prediction_loss": PREDICTION_LOSSES,
            "mask_loss": MASK_LOSSES,
            "class_mode": CLASS_MODES,
            "schedule": SCHEDULES,
            "refine_select": SELECTIONS,
            "head": HEADS,
        }
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise LTEConfigError(f"{key} must be one of {', '.join(valid)}; got {getattr(self, key)!r}")
        if self.mask_loss == "entropy" and self.activation != "softmax":
            raise LTEConfigError(
                "mask_loss 'entropy' needs activation 'softmax' (scores must sum to 1 per image)"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise LTEConfigError(f"{f.name} must be a finite number, got {value}")

        resolve_device(self.device)  # the one device check (one line when unusable)
        if self.precision not in PRECISIONS:
            raise LTEConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.train_per_class is not None and self.train_per_class < 1:
            raise LTEConfigError(f"train_per_class must be at least 1 (or null: all), got {self.train_per_class}")
        positive = (
            "grad_accum",
            "val_per_class",
            "epochs",
            "batch_size",
            "eval_batch_size",
            "refine_steps",
            "reference_folder_size",
        )
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise LTEConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.workers is not None and self.workers < 0:
            raise LTEConfigError(f"workers must be 0 or more (or null: the default), got {self.workers}")
        for key in ("freeze_blocks", "checkpoint_every"):
            if int(getattr(self, key)) < 0:
                raise LTEConfigError(f"{key} must be 0 or more, got {getattr(self, key)}")
        for key in (
            "lr",
            "weight_decay",
            "refine_lr",
            "refine_weight_decay",
            "lambda_pred",
            "lambda_mask",
            "head_init_std",
        ):
            if float(getattr(self, key)) < 0:
                raise LTEConfigError(f"{key} must not be negative, got {getattr(self, key)}")
        if not 0.0 <= self.lambda_mask_warmup <= 1.0:
            raise LTEConfigError(f"lambda_mask_warmup must be in [0, 1], got {self.lambda_mask_warmup}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise LTEConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.memory_budget is not None:
            try:
                parse_bytes(self.memory_budget)
            except ExplainersError as exc:
                raise LTEConfigError(f"memory_budget: {exc}") from None

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LTEConfig:
        """Build from a mapping; unknown keys are an error naming the valid ones, values are coerced."""
        try:
            return build(cls, data, "LTE")
        except ConfigError as exc:
            raise LTEConfigError(str(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> LTEConfig:
        """From a JSON or TOML file of settings."""
        try:
            data = read_config_file(path)
        except ConfigError as exc:
            raise LTEConfigError(str(exc)) from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> LTEConfig:
        """A copy with ``changes`` applied (same key checks as :meth:`from_dict`)."""
        return type(self).from_dict({**self.to_dict(), **changes})
