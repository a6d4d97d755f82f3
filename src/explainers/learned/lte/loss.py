"""The LTE objective (docs/learned-explainers.md): masked input in the published order, prediction and mask terms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explainers.errors import ExplainersError
from explainers.learned.lte.config import LTEConfig
from explainers.models.base import ExplaineeAdapter


def masked_input(adapter: ExplaineeAdapter, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixel values of ``images ⊙ mask`` for the explainee.

    Order matters: resize to the explainee's size, keep [0, 1], multiply by the mask (removed
    pixels become black, 0 in [0,1] space), and only then normalise with the explainee's mean/std. Masking
    after normalising would replace removed pixels by the dataset mean colour instead of black.
    """
    images = adapter.resize(images)
    return adapter.normalize(images * mask.unsqueeze(1))


def mask_term(patch_scores: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image mask term on the g×g patch scores (B×gh×gw or B×P) → B.

    ``softplus``: mean softplus(s) — the reference's "bce" is ``BCEWithLogits(s, 0)`` applied to scores
    already through a sigmoid, which is exactly this; kept as the faithful default under an honest name.
    ``l1``: mean |s|. ``entropy``: −Σ s log s (softmax scores, a distribution over patches).
    """
    s = patch_scores.flatten(1)
    if kind == "softplus":
        return F.softplus(s).mean(dim=1)
    if kind == "l1":
        return s.abs().mean(dim=1)
    if kind == "entropy":
        return -(s * torch.log(s.clamp_min(1e-12))).sum(dim=1)
    raise ValueError(f"unknown mask loss {kind!r}")


def prediction_term(
    adapter: ExplaineeAdapter, images: torch.Tensor, mask: torch.Tensor, classes: torch.Tensor, kind: str
) -> torch.Tensor:
    """Per-image prediction term → B: ``ce`` (CE of the masked image's logits against c), ``logit``
    (−logit of c) or ``ce-neg`` ((CE(x ⊙ m) − CE(x ⊙ (1 − m)))/2: keep what matters, the complement must
    lose the class)."""
    logits = adapter.logits(masked_input(adapter, images, mask))
    if kind == "ce":
        return F.cross_entropy(logits, classes, reduction="none")
    if kind == "logit":
        return -logits.gather(1, classes[:, None])[:, 0]
    if kind == "ce-neg":
        neg_logits = adapter.logits(masked_input(adapter, images, 1.0 - mask))
        pos = F.cross_entropy(logits, classes, reduction="none")
        neg = F.cross_entropy(neg_logits, classes, reduction="none")
        return (pos - neg) / 2
    raise ValueError(f"unknown prediction loss {kind!r}")


def mask_weight(config: LTEConfig, step: int, total_steps: int) -> float:
    """λ_mask at pre-training step ``step`` (0-based) of ``total_steps``: ramped linearly from 0 over the
    first ``lambda_mask_warmup`` of training, then constant. A mask weight at full strength from the first
    step can drive the masks of a class to zero before the prediction term has found that class's evidence
    (an all-zero mask is a local minimum: the mask term is at its floor and the gradient of the prediction
    term through a sigmoid at 0 is tiny); the warm-up lets the explainer find the evidence first."""
    if config.lambda_mask_warmup <= 0:
        return config.lambda_mask
    ramp = config.lambda_mask_warmup * max(1, total_steps)
    return config.lambda_mask * min(1.0, step / ramp)


@dataclass
class LossTerms:
    """Per-image terms (B each): total = λ_pred·prediction + λ_mask·mask."""

    total: torch.Tensor
    prediction: torch.Tensor
    mask: torch.Tensor


def lte_loss(
    adapter: ExplaineeAdapter,
    images: torch.Tensor,
    patch_scores: torch.Tensor,
    mask: torch.Tensor,
    classes: torch.Tensor,
    config: LTEConfig,
    lambda_mask: float | None = None,
) -> LossTerms:
    """Per-image LTE loss. Callers reduce (mean over the batch for pre-training, sum for per-image
    refinement, where each image owns its parameters). ``lambda_mask`` overrides ``config.lambda_mask``
    (pre-training's warm-up of the mask weight, :func:`mask_weight`)."""
    pred = prediction_term(adapter, images, mask, classes, config.prediction_loss)
    mterm = mask_term(patch_scores, config.mask_loss)
    weight = config.lambda_mask if lambda_mask is None else lambda_mask
    total = config.lambda_pred * pred + weight * mterm
    return LossTerms(total=total, prediction=pred, mask=mterm)


@torch.no_grad()
def loss_classes(
    adapter: ExplaineeAdapter, images: torch.Tensor, labels: torch.Tensor, mode: str
) -> torch.Tensor:
    """The class each image is explained for: its label (``target``) or the clean argmax (``predicted``)."""
    if mode == "target":
        if (labels < 0).any():
            raise ExplainersError("class mode 'target' needs ground-truth labels; use --class predicted")
        return labels
    return adapter.predict(adapter.resize(images)).argmax(dim=-1)
