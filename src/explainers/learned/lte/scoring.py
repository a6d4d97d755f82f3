"""How LTE scores masks: the POS/NEG accuracy AUC of docs/metrics.md, from the shared metrics.

pLTE model selection and LTE step selection use exactly the evaluation suite's metric
(:func:`explainers.metrics.perturbation.perturbation_auc`), so the score a mask is selected on is the score
it is later evaluated with. ``tests/test_lte_scoring.py`` checks it against an independent implementation.
"""

from __future__ import annotations

import torch

from explainers.metrics.perturbation import perturbation_auc as shared_auc
from explainers.models.base import ExplaineeAdapter


def perturbation_auc(
    adapter: ExplaineeAdapter,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    order: str = "pos",
    max_batch: int = 64,
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image POS (``order="pos"``, lower is better) or NEG (higher is better) accuracy AUC in [0, 90],
    float64 on the CPU. ``images``: raw B×3×H×W in [0,1] and ``maps`` B×H×W, at the explainee's size."""
    return shared_auc(
        adapter, images, maps.detach(), classes, order=order, max_batch=max_batch, clean_logits=clean_logits
    ).cpu()
