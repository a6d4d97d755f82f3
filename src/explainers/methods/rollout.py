"""Attention rollout (Abnar & Zuidema, 2020): per block Â = mean_heads(A) + I with rows normalised to
sum 1, multiplied from the first block to the last; the CLS row's patch columns."""

from __future__ import annotations

import torch

from explainers.methods._attention import AttentionMethod, rollout
from explainers.methods.base import register_method


@register_method("rollout")
class AttentionRollout(AttentionMethod):
    """Class-independent: ``targets`` only matter for the shared API."""

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            attentions = self.adapter.forward_attentions(self.adapter.normalize(images)).attentions
            joint = rollout([a.mean(dim=1) for a in attentions], add_identity=True, normalize_rows=True)
        return self.cls_patches(joint)
