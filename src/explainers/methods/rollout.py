"""Attention rollout (Abnar & Zuidema, 2020): per block Â = mean_heads(A) + I with rows normalised to
sum 1, multiplied from the first block to the last; the CLS row's patch columns.

Option ``start_layer``: the block the product starts at (0, all blocks; the Transformer Attribution
paper's benchmark scripts use 1)."""

from __future__ import annotations

from typing import Any

import torch

from explainers.methods._attention import AttentionMethod, check_start_layer, rollout
from explainers.methods.base import Attribution, Cost, register_method
from explainers.models.base import ExplaineeAdapter, resolve_targets


@register_method("rollout")
class AttentionRollout(AttentionMethod):
    """Class-independent: ``classes`` only matter for the shared API."""

    summary = "product over blocks of (mean-head attention + I), rows normalised, CLS row"
    cost = Cost.FORWARD
    reference = "Abnar & Zuidema, ACL 2020"

    def __init__(self, adapter: ExplaineeAdapter, *, start_layer: int = 0, normalize: bool = True) -> None:
        super().__init__(adapter, normalize=normalize)
        self.start_layer = check_start_layer(adapter, start_layer, self.name)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "start_layer": self.start_layer}

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        with torch.no_grad():
            out = self.adapter.forward_attentions(self.adapter.normalize(images))
            check_start_layer(self.adapter, self.start_layer, self.name, blocks=len(out.attentions))
            means = [a.mean(dim=1) for a in out.attentions[self.start_layer :]]
            joint = rollout(means, add_identity=True, normalize_rows=True)
        return Attribution(
            maps=self.cls_patches(joint), logits=out.logits, classes=resolve_targets(classes, out.logits)
        )
