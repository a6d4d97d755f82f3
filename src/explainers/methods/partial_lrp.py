"""Partial LRP (Voita et al., 2019, as used for ViTs by Chefer et al.): relevance arriving at the last
block's attention probabilities, relu, mean over heads, the CLS row's patch columns.

Options ``rules`` and ``eps`` as for ``lrp`` (``rules="benchmark"`` gives the published baseline row)."""

from __future__ import annotations

import torch

from explainers.methods._relevance import propagate
from explainers.methods.base import Attribution, Cost, register_method
from explainers.methods.lrp import RelevanceOptions


@register_method("partial-lrp")
class PartialLRP(RelevanceOptions):
    summary = "LRP relevance at the last block's attention, relu, mean over heads, CLS row"
    cost = Cost.FORWARD
    reference = "Voita et al., ACL 2019; ViT rules of Chefer et al., CVPR 2021"

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        result = propagate(
            self.adapter, self.adapter.normalize(images), classes, depth="last-attention", rules=self.rules
        )
        relevance = result.attention_relevance[-1]
        assert relevance is not None
        maps = self.cls_patches(relevance.clamp_min(0).mean(dim=1))
        return Attribution(maps=maps, logits=result.logits, classes=result.targets)
