"""Attention rollout (Abnar & Zuidema, 2020): per block Â = mean_heads(A) + I with rows normalised to
sum 1, multiplied from the first block to the last; the CLS row's patch columns.

Option ``start_layer``: the block the product starts at (0, all blocks; the Transformer Attribution
paper's benchmark scripts use 1)."""

from __future__ import annotations

from typing import Any

import torch

from explainers.methods._attention import AttentionMethod, check_start_layer, rollout
from explainers.methods.base import register_method
from explainers.models.base import ExplaineeAdapter


@register_method("rollout")
class AttentionRollout(AttentionMethod):
    """Class-independent: ``targets`` only matter for the shared API."""

    def __init__(self, adapter: ExplaineeAdapter, *, start_layer: int = 0, normalize: bool = True) -> None:
        super().__init__(adapter, normalize=normalize)
        self.start_layer = check_start_layer(adapter, start_layer, self.name)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "start_layer": self.start_layer}

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            attentions = self.adapter.forward_attentions(self.adapter.normalize(images)).attentions
            check_start_layer(self.adapter, self.start_layer, self.name, blocks=len(attentions))
            means = [a.mean(dim=1) for a in attentions[self.start_layer :]]
            joint = rollout(means, add_identity=True, normalize_rows=True)
        return self.cls_patches(joint)
