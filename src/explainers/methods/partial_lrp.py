"""Partial LRP (Voita et al., 2019, as used for ViTs by Chefer et al.): relevance arriving at the last
block's attention probabilities, relu, mean over heads, the CLS row's patch columns."""

from __future__ import annotations

import torch

from explainers.methods._attention import AttentionMethod
from explainers.methods._relevance import propagate
from explainers.methods.base import register_method


@register_method("partial-lrp")
class PartialLRP(AttentionMethod):
    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result = propagate(
            self.adapter,
            self.adapter.normalize(images),
            self.targets_or_none(targets),
            depth="last-attention",
        )
        relevance = result.attention_relevance[-1]
        assert relevance is not None
        return self.cls_patches(relevance.clamp_min(0).mean(dim=1))
