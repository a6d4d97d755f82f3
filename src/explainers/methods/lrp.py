"""Full LRP (Chefer et al.'s rule set, SPEC §5): relevance of the target logit propagated to the pixels,
zβ at the patch-embedding convolution, summed over colour channels."""

from __future__ import annotations

import torch

from explainers.methods._attention import AttentionMethod
from explainers.methods._relevance import propagate
from explainers.methods.base import register_method


@register_method("lrp")
class FullLRP(AttentionMethod):
    """Pixel-level relevance (B×H×W, signed before the per-image min–max)."""

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result = propagate(
            self.adapter, self.adapter.normalize(images), self.targets_or_none(targets), depth="input"
        )
        assert result.pixel_relevance is not None
        return result.pixel_relevance.sum(dim=1)
